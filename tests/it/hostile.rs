//! Hostile and careless producers, on the real servers: each class of input that once halted,
//! fooled or starved ingest, followed by a good event that must become a record within the
//! harness's patience. The invariant under test (docs/architecture.md, "No message can halt a
//! partition"): every submission ends as exactly one record or one rejection, and nothing a
//! message holds stops the messages after it.

use atp_core::Reason;
use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_nats::headers::IngressHeaders;
use atp_nats::subjects;
use atp_tests::*;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn gateway_and_workers() -> Roles {
    roles("gateway,ingest,projector")
}

/// Publishes every bad submission, then a good marker; once the marker is a record, every bad
/// one before it has been handled (ingest keeps ingress order). Returns the rejections.
async fn each_refused_then_a_good_one_recorded(
    stack: &Stack,
    bad: Vec<(async_nats::HeaderMap, Vec<u8>)>,
) -> Vec<atp_core::reason::RejectionEnvelope> {
    refused_then_recorded(stack, bad, 0).await
}

/// The same, on a partition that already holds `records_before` records (and no rejection).
async fn refused_then_recorded(
    stack: &Stack,
    bad: Vec<(async_nats::HeaderMap, Vec<u8>)>,
    records_before: u64,
) -> Vec<atp_core::reason::RejectionEnvelope> {
    let p = partition(TENANT, SOURCE);
    let mut seqs = Vec::new();
    for (h, body) in bad {
        let ack = stack
            .js
            .publish_with_headers(subjects::ingress(&p), h, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        seqs.push(ack.sequence);
    }
    stack
        .publish(&p, &stack.sign(stack.event("good-after")))
        .await;
    eventually("the good event after the bad ones recorded", || async {
        (stack.ledger_len(&p).await == records_before + 1).then_some(())
    })
    .await;
    let ledger = stack.ledger(&p).await;
    assert_eq!(ledger[ledger.len() - 1].event["id"], json!("good-after"));
    let rejections = stack.rejections(&p).await;
    let answered: Vec<u64> = rejections.iter().map(|r| r.ingress_seq).collect();
    assert_eq!(
        answered, seqs,
        "each bad submission has exactly one rejection"
    );
    rejections
}

/// The gateway's short form of an event of the test source.
fn short(id: &str, actor: &str) -> Value {
    json!({"sourceId": SOURCE, "id": id, "actor": {"id": actor, "type": "user"},
           "action": "UPDATE", "resource": {"type": "Order", "id": "1"}})
}

fn structured() -> async_nats::HeaderMap {
    IngressHeaders::structured().into_map()
}

#[tokio::test]
async fn a_line_break_in_an_id_is_refused_and_ingest_goes_on() {
    let stack = Stack::start().await;
    let running = stack.serve(ingest_only()).await;
    let mut bad = Vec::new();
    for id in ["a\nb", "a\rb", "tab\there", "x\u{85}y"] {
        let ev = stack.sign(stack.event(id));
        bad.push((structured(), serde_json::to_vec(&ev).unwrap()));
    }
    let rejections = each_refused_then_a_good_one_recorded(&stack, bad).await;
    running.stop().await;
    for r in &rejections {
        assert_eq!(r.reason, Reason::Malformed, "{}", r.detail);
        assert!(r.detail.contains("control character"), "{}", r.detail);
        assert_eq!(r.event_id, None, "an unprintable id is not copied out");
        assert_eq!(r.event_encoding, "json", "the event is kept as received");
    }
}

#[tokio::test]
async fn a_large_non_json_submission_is_kept_as_a_bounded_prefix_with_its_hash() {
    let stack = Stack::start().await;
    let running = stack.serve(ingest_only()).await;
    // Just under ATP_INGRESS's 1 MiB: as base64 in an envelope it would not fit ATP_REJECTED.
    let body: Vec<u8> = (0..900 * 1024).map(|i| (i % 251) as u8).collect();
    let rejections =
        each_refused_then_a_good_one_recorded(&stack, vec![(structured(), body.clone())]).await;
    running.stop().await;
    let r = &rejections[0];
    assert_eq!(r.reason, Reason::TooLarge, "{}", r.detail);
    assert!(r.event_truncated);
    assert_eq!(r.event_bytes, Some(body.len() as u64));
    let sha = atp_core::Digest::of(&body);
    assert_eq!(r.event_sha256, Some(sha.to_string()));
    let kept = base64::engine::general_purpose::STANDARD
        .decode(r.event.as_str().unwrap())
        .unwrap();
    assert_eq!(kept, body[..kept.len()], "a prefix of what was sent");
    assert!(kept.len() <= atp_core::reason::KEPT_PREFIX_BYTES);
}

#[tokio::test]
async fn ambiguous_binary_mode_headers_are_refused() {
    let stack = Stack::start().await;
    let running = stack.serve(ingest_only()).await;
    let body = br#"{"actor":{"id":"bob","type":"user"},"action":"LOGIN","resource":{"type":"S","id":"1"}}"#;
    let mut h = async_nats::HeaderMap::new();
    h.insert("content-type", "application/json");
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", "one");
    h.insert("CE-ID", "two");
    h.insert("ce-source", SOURCE_URI);
    h.insert("ce-type", "com.acme.login");
    h.insert("ce-time", "2026-12-07T00:00:00Z");
    let rejections = each_refused_then_a_good_one_recorded(&stack, vec![(h, body.to_vec())]).await;
    running.stop().await;
    assert_eq!(rejections[0].reason, Reason::Malformed);
    assert!(
        rejections[0].detail.contains("ce-id"),
        "{}",
        rejections[0].detail
    );
}

#[tokio::test]
async fn another_tenants_message_id_cannot_suppress_an_event() {
    let stack = Stack::start().await;
    let running = stack.serve(gateway_and_workers()).await;
    let api = Api::new(&running);
    // A producer takes the message id the contract once told the gateway to use for acme's
    // event `victim-1`, on its own subject (a direct NATS producer sets any header it likes).
    let other = partition("globex", SOURCE);
    stack
        .publish_raw(
            &other,
            b"{}".to_vec(),
            Some(&format!("{TENANT}:{SOURCE}:victim-1")),
        )
        .await;
    let token = stack.token(TENANT, Permission::Producer);
    let resp = api
        .post("/api/v1/audit/append", &token)
        .header("prefer", "wait=30")
        .json(&short("victim-1", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{:?}",
        resp.text().await
    );
    running.stop().await;
}

#[tokio::test]
async fn idempotency_keys_are_scoped_and_repeats_say_so() {
    let stack = Stack::start().await;
    let running = stack.serve(gateway_and_workers()).await;
    let api = Api::new(&running);
    let token = stack.token(TENANT, Permission::Producer);
    let event = short;
    let append = |body: Value, key: Option<&str>| {
        let mut req = api
            .post("/api/v1/audit/append", &token)
            .header("prefer", "wait=30")
            .json(&body);
        if let Some(k) = key {
            req = req.header("x-idempotency-key", k);
        }
        req.send()
    };

    // Event 1 carrying event 2's key: refused, so it can never stand for event 2.
    let key2 = format!("{TENANT}:{SOURCE}:e-2");
    let r = append(event("e-1", "alice"), Some(&key2)).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "IDEMPOTENCY_KEY_MISMATCH", "{p}");

    // Event 2 is recorded.
    let r = append(event("e-2", "alice"), Some(&key2)).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let first: Value = r.json().await.unwrap();

    // The same event again: the same record, marked as a repeat.
    let r = append(event("e-2", "alice"), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["recordId"], first["recordId"]);
    assert_eq!(again["idempotent"], json!(true));

    // Other content under the same id: 409, never the old record.
    let r = append(event("e-2", "mallory"), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "IDEMPOTENCY_CONFLICT", "{p}");

    // The short form may leave the id to the key.
    let mut short = event("unused", "carol");
    short.as_object_mut().unwrap().remove("id");
    let r = append(short, Some("order-77-paid")).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(stack.projected_records(TENANT).await, 2);
    running.stop().await;
}

#[tokio::test]
async fn the_same_id_with_other_content_on_nats_is_refused_as_a_conflict() {
    let stack = Stack::start().await;
    let running = stack.serve(ingest_only()).await;
    let p = partition(TENANT, SOURCE);
    stack.publish(&p, &stack.sign(stack.event("dup-1"))).await;
    let mut other = stack.event("dup-1");
    other["data"]["action"] = json!("DELETE");
    let other = serde_json::to_vec(&stack.sign(other)).unwrap();
    let rejections = refused_then_recorded(&stack, vec![(structured(), other)], 1).await;
    running.stop().await;
    assert_eq!(rejections[0].reason, Reason::IdempotencyConflict);
    assert!(
        rejections[0].detail.contains("chainIndex 0"),
        "{}",
        rejections[0].detail
    );
}

#[tokio::test]
async fn a_line_break_sent_to_the_gateway_is_refused_at_the_door() {
    let stack = Stack::start().await;
    let running = stack.serve(gateway_and_workers()).await;
    let api = Api::new(&running);
    let token = stack.token(TENANT, Permission::Producer);
    let r = api
        .post("/api/v1/audit/append", &token)
        .json(&short("a\nb", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "MALFORMED", "{p}");
    let r = api
        .post("/api/v1/audit/append", &token)
        .header("prefer", "wait=30")
        .json(&short("fine", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    running.stop().await;
}

#[tokio::test]
async fn a_token_whose_subject_could_forge_a_header_is_refused() {
    let stack = Stack::start().await;
    let running = stack.serve(gateway_and_workers()).await;
    let api = Api::new(&running);
    for subject in ["svc\nAtp-Gateway-Mac: forged", "tab\there", ""] {
        let token = atp::dev::mint_token_in(
            &stack.issuer,
            TENANT,
            Permission::Producer,
            subject,
            3600,
            atp_core::edition::Edition::Enterprise,
        )
        .unwrap();
        let r = api
            .post("/api/v1/audit/append", &token)
            .json(&short("forged-1", "bob"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{subject:?}");
    }
    // A printable subject is fine, and the event it sends is recorded.
    let token = atp::dev::mint_token_in(
        &stack.issuer,
        TENANT,
        Permission::Producer,
        "svc-billing ✓",
        3600,
        atp_core::edition::Edition::Enterprise,
    )
    .unwrap();
    let r = api
        .post("/api/v1/audit/append", &token)
        .header("prefer", "wait=30")
        .json(&short("fine-1", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    running.stop().await;
}
