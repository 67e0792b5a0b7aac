//! Admission: the happy paths and one test per reason code.

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use super::*;
use crate::names::{SourceId, TenantId};
use crate::partition::{Decision, PartitionState, Stamps};
use crate::policy::PolicyStamp;
use crate::producer::{example_event, sign_structured};
use crate::registry::ProducerKey;

const URI: &str = "https://crm.example.com/core";

fn partition() -> PartitionKey {
    PartitionKey::new(
        TenantId::new("acme").unwrap(),
        SourceId::new("crm").unwrap(),
    )
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

fn registration() -> SourceRegistration {
    let mut r = SourceRegistration::new(
        TenantId::new("acme").unwrap(),
        SourceId::new("crm").unwrap(),
        URI,
    );
    r.keys.push(ProducerKey::new(
        "k1",
        key().verifying_key().to_bytes(),
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    r
}

fn event(id: &str) -> Map<String, Value> {
    example_event(
        id,
        URI,
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
        "alice",
        "UPDATE",
    )
}

fn signed(mut e: Map<String, Value>) -> Vec<u8> {
    sign_structured(&mut e, &key(), "k1").unwrap();
    serde_json::to_vec(&e).unwrap()
}

fn nats(body: &[u8]) -> Submission<'_> {
    Submission {
        body,
        content_type: Some("application/cloudevents+json"),
        ce_headers: vec![],
        repeated: vec![],
        unmappable: None,
        channel: Channel::Nats,
    }
}

fn admit_bytes(body: &[u8]) -> Result<Admitted, Rejection> {
    admit(&partition(), &nats(body), Some(&registration()))
}

fn reason_of(body: &[u8]) -> Reason {
    match admit_bytes(body) {
        Ok(_) => panic!("expected a rejection"),
        Err(r) => r.reason,
    }
}

#[test]
fn a_signed_structured_event_is_admitted_as_received() {
    let body = signed(event("e1"));
    let a = admit_bytes(&body).unwrap();
    assert_eq!(a.id, "e1");
    assert_eq!(
        a.producer,
        ProducerStamp {
            key_id: Some("k1".to_owned()),
            auth: "dsse-ed25519".to_owned()
        }
    );
    assert_eq!(
        Value::Object(a.event),
        serde_json::from_slice::<Value>(&body).unwrap()
    );
}

#[test]
fn signed_sequence_and_tenantid_are_accepted_and_parsed() {
    let mut e = event("e1");
    e.insert("sequence".into(), json!("17"));
    e.insert("tenantid".into(), json!("acme"));
    let a = admit_bytes(&signed(e)).unwrap();
    assert_eq!(a.sequence, Some(17));
}

#[test]
fn binary_mode_is_stored_structured_with_the_body_byte_for_byte() {
    let data = br#"{"actor":{"id":"bob","type":"user"},"action":"LOGIN","resource":{"type":"Session","id":"s1"}}"#;
    let time = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    let material = crate::dsse::verification_material(&crate::dsse::SignedFields {
        id: Some("b1"),
        source: Some(URI),
        specversion: Some("1.0"),
        ty: Some("com.example.login"),
        datacontenttype: Some("application/json"),
        time: Some(time),
        data,
        ..Default::default()
    });
    let headers = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), "b1".to_owned()),
        ("source".to_owned(), URI.to_owned()),
        ("type".to_owned(), "com.example.login".to_owned()),
        ("time".to_owned(), "2026-11-23T10:00:00Z".to_owned()),
        (
            "dssematerial".to_owned(),
            crate::dsse::sign(&material, &key(), "k1"),
        ),
    ];
    let sub = Submission {
        body: data,
        content_type: Some("application/json"),
        ce_headers: headers,
        repeated: vec![],
        unmappable: None,
        channel: Channel::Nats,
    };
    let a = admit(&partition(), &sub, Some(&registration())).unwrap();
    let stored = a.event.get("data_base64").and_then(Value::as_str).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(stored)
            .unwrap(),
        data.to_vec()
    );
    assert_eq!(
        a.event.get("datacontenttype"),
        Some(&json!("application/json"))
    );
    assert_eq!(facets_of(&Value::Object(a.event)).unwrap().action, "LOGIN");
}

#[test]
fn gateway_submissions_may_be_unsigned_and_are_attributed_to_the_token() {
    let body = serde_json::to_vec(&event("e1")).unwrap();
    let sub = Submission {
        body: &body,
        content_type: None,
        ce_headers: vec![],
        repeated: vec![],
        unmappable: None,
        channel: Channel::Gateway {
            subject: "svc-billing".to_owned(),
        },
    };
    let a = admit(&partition(), &sub, Some(&registration())).unwrap();
    assert_eq!(
        a.producer,
        ProducerStamp {
            key_id: None,
            auth: "token:svc-billing".to_owned()
        }
    );
}

#[test]
fn malformed_json() {
    assert_eq!(reason_of(b"{\"specversion\":"), Reason::Malformed);
    assert_eq!(reason_of(b"[1,2]"), Reason::Malformed);
}

#[test]
fn duplicate_keys_and_unsafe_numbers_are_malformed() {
    let body = signed(event("e1"));
    let text = String::from_utf8(body).unwrap();
    let dup = text.replacen("\"id\":\"e1\"", "\"id\":\"e1\",\"id\":\"e2\"", 1);
    assert_eq!(reason_of(dup.as_bytes()), Reason::Malformed);
    let big = text.replacen("\"amount\":12.5", "\"amount\":9007199254740993", 1);
    assert_ne!(big, text);
    assert_eq!(reason_of(big.as_bytes()), Reason::Malformed);
}

#[test]
fn missing_required_attributes() {
    for attr in [
        "id",
        "source",
        "type",
        "time",
        "specversion",
        "datacontenttype",
        "data",
    ] {
        let mut e = event("e1");
        e.remove(attr);
        let r = admit_bytes(&signed(e)).unwrap_err();
        assert_eq!(r.reason, Reason::SchemaValidationFailed, "{attr}: {r}");
    }
}

#[test]
fn data_outside_the_audit_schema_names_the_offender() {
    let mut e = event("e1");
    e.get_mut("data")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert("surprise".into(), json!(1));
    let r = admit_bytes(&signed(e)).unwrap_err();
    assert_eq!(r.reason, Reason::SchemaValidationFailed);
    assert!(r.detail.contains("surprise"), "{r}");
    let mut nested = event("e2");
    nested["data"]["attributes"]["deep"] = json!({"x": 1});
    let r = admit_bytes(&signed(nested)).unwrap_err();
    assert!(r.detail.contains("data.attributes.deep"), "{r}");
    // A nested member of the wrong type or a missing one is named by its JSON path.
    let mut wrong = event("e3");
    wrong["data"]["resource"]["id"] = json!(7);
    let r = admit_bytes(&signed(wrong)).unwrap_err();
    assert!(r.detail.starts_with("data.resource.id: "), "{r}");
    let mut missing = event("e4");
    missing["data"]["actor"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    let r = admit_bytes(&signed(missing)).unwrap_err();
    assert!(
        r.detail.starts_with("data.actor: missing field `id`"),
        "{r}"
    );
}

#[test]
fn unsigned_on_nats() {
    assert_eq!(
        reason_of(&serde_json::to_vec(&event("e1")).unwrap()),
        Reason::SignatureMissing
    );
}

#[test]
fn bad_signature_after_tampering() {
    let mut e: Map<String, Value> = serde_json::from_slice(&signed(event("e1"))).unwrap();
    e["data"]["action"] = json!("DELETE");
    assert_eq!(
        reason_of(&serde_json::to_vec(&e).unwrap()),
        Reason::SignatureInvalid
    );
}

#[test]
fn unsigned_sequence_is_a_bad_signature() {
    let mut e = event("e1");
    sign_structured(&mut e, &key(), "k1").unwrap();
    e.insert("sequence".into(), json!("5"));
    assert_eq!(
        reason_of(&serde_json::to_vec(&e).unwrap()),
        Reason::SignatureInvalid
    );
}

#[test]
fn unknown_key() {
    let mut e = event("e1");
    sign_structured(&mut e, &key(), "k-unknown").unwrap();
    assert_eq!(
        reason_of(&serde_json::to_vec(&e).unwrap()),
        Reason::UnknownKey
    );
}

#[test]
fn revoked_key() {
    let mut reg = registration();
    reg.keys[0].revoked_at = Some(Utc::now());
    let body = signed(event("e1"));
    let r = admit(&partition(), &nats(&body), Some(&reg)).unwrap_err();
    assert_eq!(r.reason, Reason::KeyRevoked);
}

#[test]
fn tenant_mismatch() {
    let mut e = event("e1");
    e.insert("tenantid".into(), json!("globex"));
    assert_eq!(reason_of(&signed(e)), Reason::TenantMismatch);
}

#[test]
fn oversize() {
    let mut e = event("e1");
    e["data"]["attributes"]["blob"] = json!("x".repeat(70_000));
    assert_eq!(reason_of(&signed(e)), Reason::TooLarge);
}

#[test]
fn unknown_and_mismatched_sources() {
    let body = signed(event("e1"));
    assert_eq!(
        admit(&partition(), &nats(&body), None).unwrap_err().reason,
        Reason::UnknownSource
    );
    let mut e = event("e1");
    e.insert("source".into(), json!("https://elsewhere.example"));
    assert_eq!(reason_of(&signed(e)), Reason::SourceMismatch);
}

fn stamps(n: u8) -> Stamps {
    Stamps {
        record_id: format!("01JD00000000000000000000{n:02}"),
        received_at: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
        committed_at: Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 1).unwrap(),
        policy: PolicyStamp::default(),
        sealing: None,
    }
}

fn with_seq(id: &str, seq: u64) -> Admitted {
    let mut e = event(id);
    e.insert("sequence".into(), json!(seq.to_string()));
    admit_bytes(&signed(e)).unwrap()
}

#[test]
fn sequence_regression_unless_exact_duplicate() {
    let mut p = PartitionState::genesis(partition());
    let first = p.append(with_seq("e5", 5), 1, stamps(1)).unwrap();
    assert_eq!(first.link.index, 0);
    assert_eq!(first.link.prev_hash, crate::chain::genesis(&partition()));
    let second = p.append(with_seq("e9", 9), 2, stamps(2)).unwrap();
    assert_eq!(second.link.prev_hash, first.link.chain_hash);
    assert!(matches!(p.decide(&with_seq("e5", 5)), Decision::Duplicate(r) if r.chain_index == 0));
    assert!(
        matches!(p.decide(&with_seq("e7", 7)), Decision::Reject(r) if r.reason == Reason::SequenceRegression)
    );
    assert_eq!(p.decide(&with_seq("e10", 10)), Decision::Append);
    assert_eq!((p.seq_hwm, p.ledger_cursor, p.next_index), (Some(9), 2, 2));
    assert!(
        p.knows_every_id(),
        "a partition built here knows its whole history"
    );
    let resumed = PartitionState::resume(partition(), 1, second.link.chain_hash, Some(9), 2);
    assert!(
        !resumed.knows_every_id(),
        "one resumed from the ledger's tail does not"
    );
}

#[test]
fn the_audit_schema_is_published() {
    let s = audit_data_schema();
    assert_eq!(s["additionalProperties"], json!(false), "{s}");
    assert!(s["required"].as_array().unwrap().contains(&json!("actor")));
}

#[test]
fn control_characters_in_copied_attributes_are_malformed() {
    for (attr, bad) in [
        ("id", "a\nb"),
        ("id", "a\rb"),
        ("id", "tab\there"),
        ("id", "nel\u{85}"),
        ("type", "com.acme\n.x"),
        ("subject", "x\u{7f}"),
    ] {
        let mut e = event("e1");
        e.insert(attr.into(), json!(bad));
        let r = admit_bytes(&signed(e)).unwrap_err();
        assert_eq!(r.reason, Reason::Malformed, "{attr}={bad:?}: {r}");
        assert!(r.detail.contains("control character"), "{r}");
    }
    let mut e = event("e1");
    e.insert("type".into(), json!("t".repeat(MAX_ATTRIBUTE_LEN + 1)));
    assert_eq!(reason_of(&signed(e)), Reason::Malformed);
    // Printable Unicode is fine.
    assert!(admit_bytes(&signed(event("bestellung-übermittelt-✓"))).is_ok());
}

#[test]
fn a_binary_mode_header_given_twice_in_any_case_is_malformed() {
    let body = br#"{"actor":{"id":"bob","type":"user"},"action":"LOGIN","resource":{"type":"S","id":"1"}}"#;
    let pairs = [
        ("Content-Type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "one"),
        ("CE-ID", "two"),
    ];
    let sub = Submission::from_headers(body, pairs, Channel::Nats);
    assert_eq!(sub.repeated, vec!["ce-id".to_owned()]);
    let r = admit(&partition(), &sub, Some(&registration())).unwrap_err();
    assert_eq!(r.reason, Reason::Malformed);
    assert!(r.detail.contains("ce-id"), "{r}");

    let twice = [
        ("content-type", "application/json"),
        ("Content-Type", "text/plain"),
    ];
    let sub = Submission::from_headers(body, twice, Channel::Nats);
    assert_eq!(sub.content_type, Some("application/json"));
    assert_eq!(sub.repeated, vec!["content-type".to_owned()]);
}

#[test]
fn the_same_id_with_other_content_is_a_conflict_not_a_duplicate() {
    let mut p = PartitionState::genesis(partition());
    p.append(admit_bytes(&signed(event("e1"))).unwrap(), 1, stamps(1))
        .unwrap();
    // The same event again (another signature run, another time): a duplicate.
    let mut again = event("e1");
    again.insert("time".into(), json!("2026-11-23T11:00:00Z"));
    assert!(matches!(
        p.decide(&admit_bytes(&signed(again)).unwrap()),
        Decision::Duplicate(r) if r.chain_index == 0
    ));
    // Other data under the same id: refused, naming the record it collides with.
    let other = example_event(
        "e1",
        URI,
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap(),
        "mallory",
        "DELETE",
    );
    match p.decide(&admit_bytes(&signed(other)).unwrap()) {
        Decision::Reject(r) => {
            assert_eq!(r.reason, Reason::IdempotencyConflict);
            assert!(r.detail.contains("chainIndex 0"), "{r}");
        }
        d => panic!("expected a conflict, got {d:?}"),
    }
}

#[test]
fn the_stored_fingerprint_is_the_admitted_one() {
    let a = admit_bytes(&signed(event("e1"))).unwrap();
    let stored = Value::Object(a.event.clone());
    assert_eq!(stored_fingerprint(&stored), Some(a.fingerprint));
}

#[test]
fn rejection_details_never_quote_a_value() {
    let cases: [(&str, &str); 5] = [
        (
            "invalid type: string \"ada@example.com\", expected a map",
            "invalid type: string, expected a map",
        ),
        (
            "invalid type: integer `42`, expected a string",
            "invalid type: integer, expected a string",
        ),
        (
            "unknown variant `ada@example.com`, expected `success` or `failure`",
            "unknown variant, expected `success` or `failure`",
        ),
        (
            "invalid value: string \"x\", expected RFC 3339",
            "invalid value: string, expected RFC 3339",
        ),
        ("missing field `id`", "missing field `id`"),
    ];
    for (serde, shown) in cases {
        assert_eq!(super::value_free(serde), shown, "{serde}");
    }
    // Through admission: a personal value in the wrong place is not echoed.
    let mut data = serde_json::json!({
        "actor": {"id": "u-1", "type": "user"},
        "action": "READ",
        "resource": {"type": "Order", "id": "1"},
        "outcome": "ada@example.com"
    });
    let refused = super::data_as::<super::AuditData>(&data).unwrap_err();
    assert!(
        !refused.detail.contains("ada@example.com"),
        "{}",
        refused.detail
    );
    data["outcome"] = serde_json::json!("success");
    assert!(super::data_as::<super::AuditData>(&data).is_ok());
}

/// A relay's `Atp-Unmappable` refuses the message as `UNMAPPABLE` with the relay's reason,
/// whatever the body holds, even a valid signed event; a detail that could forge a log line is
/// not copied, and the header given twice is ambiguous.
#[test]
fn a_relay_marks_what_it_could_not_map() {
    let body = signed(event("e-1"));
    let refuse = |headers: Vec<(&'static str, &'static str)>, body: &[u8]| {
        let sub = Submission::from_headers(body, headers, Channel::Nats);
        admit(&partition(), &sub, Some(&registration())).unwrap_err()
    };
    let r = refuse(vec![("atp-unmappable", "no x-tenant-id")], b"not json");
    assert_eq!(r.reason, Reason::Unmappable);
    assert!(r.detail.ends_with(": no x-tenant-id"), "{}", r.detail);
    let r = refuse(vec![("Atp-Unmappable", "x\nFORGED")], &body);
    assert_eq!(r.reason, Reason::Unmappable);
    assert!(!r.detail.contains("FORGED"), "{}", r.detail);
    let r = refuse(
        vec![("Atp-Unmappable", "a"), ("ATP-UNMAPPABLE", "b")],
        &body,
    );
    assert_eq!(r.reason, Reason::Malformed);
    let sub = Submission::from_headers(&body[..], vec![("atp-unmappable-not", "x")], Channel::Nats);
    assert!(admit(&partition(), &sub, Some(&registration())).is_ok());
}
