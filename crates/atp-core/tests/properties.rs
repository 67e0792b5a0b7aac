//! Property tests of admission and planning under hostile input (issue 13): arbitrary bodies,
//! headers in both modes (repeats, odd case, control characters), ids and sizes on either side
//! of every limit, and repeated submissions. Whatever is sent ends as exactly one of an
//! admitted event or a rejection with a contract reason; a rejection's envelope always fits and
//! reads back; a repeat never becomes a second record; the chain stays verifiable.
//!
//! A separate binary from `oracles.rs` (cross-checks against other implementations) and
//! `rfc8785_vectors.rs` (published vectors): these check ATP against its own contract, and run
//! in a few seconds, so they can be run alone while working on admission.
//! `fuzz/` (cargo-fuzz) explores the same ground without a time limit.

// Helpers outside `#[test]` functions unwrap too: a failure here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use atp_core::chain::ChainVerifier;
use atp_core::dsse::{self, SignedFields};
use atp_core::event::{self, Admitted, Channel, MAX_ID_LEN, Submission};
use atp_core::names::{PartitionKey, SourceId, TenantId};
use atp_core::partition::{Decision, PartitionState, Stamps};
use atp_core::policy::PolicyStamp;
use atp_core::producer::{example_event, sign_structured};
use atp_core::reason::{
    MAX_ENVELOPE_BYTES, MAX_KEPT_BYTES, Reason, RefusalFacts, Rejection, RejectionEnvelope,
};
use atp_core::record;
use atp_core::registry::{DEFAULT_MAX_EVENT_BYTES, ProducerKey, SourceRegistration};
use chrono::{DateTime, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};
use sha2::Digest as _;

const URI: &str = "https://crm.example.com/core";

/// Cases per property. 256 is proptest's default; admission of a signed event costs well under
/// a millisecond in a debug build (ed25519 and serde_json are optimised even there), so each
/// such property stays under a second. The properties that build bodies of 64–256 KiB per case
/// take [`BIG_CASES`].
const CASES: u32 = 256;
/// Cases for properties whose inputs are hundreds of KiB: hashing and base64 of 256 KiB in a
/// debug build take milliseconds, so 48 cases keep each under ~2 s.
const BIG_CASES: u32 = 48;

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

fn time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
}

/// A signed structured-mode event with this id and actor, as bytes.
fn signed(id: &str, actor: &str) -> Vec<u8> {
    let mut e = example_event(id, URI, time(), actor, "UPDATE");
    sign_structured(&mut e, &key(), "k1").unwrap();
    serde_json::to_vec(&e).unwrap()
}

const BINARY_DATA: &[u8] =
    br#"{"actor":{"id":"bob","type":"user"},"action":"LOGIN","resource":{"type":"Session","id":"s1"}}"#;

/// The headers of a signed binary-mode event with this id (names as a producer spells them).
fn binary_headers(id: &str) -> Vec<(String, String)> {
    let material = dsse::verification_material(&SignedFields {
        id: Some(id),
        source: Some(URI),
        specversion: Some("1.0"),
        ty: Some("com.example.login"),
        datacontenttype: Some("application/json"),
        time: Some(time()),
        data: BINARY_DATA,
        ..Default::default()
    });
    [
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", id.to_owned()),
        ("ce-source", URI.to_owned()),
        ("ce-type", "com.example.login".to_owned()),
        ("ce-time", "2026-11-23T10:00:00Z".to_owned()),
        ("ce-dssematerial", dsse::sign(&material, &key(), "k1")),
        ("content-type", "application/json".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect()
}

/// Admits `body` with `headers` read as they arrived; also returns the header names
/// `Submission::from_headers` flagged as repeated.
fn admit_with(
    body: &[u8],
    headers: &[(String, String)],
    channel: Channel,
) -> (Vec<String>, Result<Admitted, Rejection>) {
    let sub = Submission::from_headers(
        body,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        channel,
    );
    let outcome = event::admit(&partition(), &sub, Some(&registration()));
    (sub.repeated, outcome)
}

/// What holds of every outcome, whatever the input: a contract reason, or an id ATP can copy
/// into headers and keys; and a rejection's envelope fits, reads back and names the body.
fn check_outcome(body: &[u8], outcome: &Result<Admitted, Rejection>) -> Result<(), TestCaseError> {
    match outcome {
        Ok(a) => {
            prop_assert!(
                a.id.len() <= MAX_ID_LEN,
                "admitted id of {} bytes",
                a.id.len()
            );
            prop_assert!(
                !a.id.chars().any(char::is_control),
                "admitted id {:?} holds a control character",
                a.id
            );
        }
        Err(r) => {
            prop_assert!(Reason::ALL.contains(&r.reason));
            check_envelope(r.clone(), None, body)?;
        }
    }
    Ok(())
}

fn check_envelope(
    rejection: Rejection,
    event_id: Option<String>,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let facts = RefusalFacts {
        rejection,
        ingress_seq: 9,
        tenant_id: "acme".into(),
        source_id: "crm".into(),
        received_at: "2026-12-07T00:00:00Z".into(),
        rejected_at: "2026-12-07T00:00:01Z".into(),
        event_id,
    };
    let (env, bytes) = RejectionEnvelope::bounded(facts, body);
    prop_assert!(
        bytes.len() <= MAX_ENVELOPE_BYTES,
        "envelope of {} bytes",
        bytes.len()
    );
    let back: RejectionEnvelope = serde_json::from_slice(&bytes).unwrap();
    prop_assert_eq!(&back, &env);
    let sha = format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)));
    prop_assert_eq!(env.event_sha256, Some(sha));
    prop_assert_eq!(env.event_bytes, Some(body.len() as u64));
    Ok(())
}

/// Header names that ATP reads, in several spellings, and some it ignores.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ce-id".to_owned()),
        Just("CE-ID".to_owned()),
        Just("Ce-Id".to_owned()),
        Just("ce-specversion".to_owned()),
        Just("CE-SpecVersion".to_owned()),
        Just("ce-source".to_owned()),
        Just("ce-type".to_owned()),
        Just("ce-time".to_owned()),
        Just("Content-Type".to_owned()),
        Just("content-type".to_owned()),
        Just("Nats-Msg-Id".to_owned()),
        "[cC][eE]-[a-zA-Z]{0,6}",
        "\\PC{0,12}",
    ]
}

/// Header values: plain, or holding control characters (C0, DEL, C1) anywhere.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.0".to_owned()),
        Just("application/json".to_owned()),
        "[a-z0-9:/._-]{0,40}",
        "[a-z]{0,8}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}][a-z]{0,8}",
        any::<String>(),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((header_name(), header_value()), 0..10)
}

/// Ids of every length around the 128-byte limit: ASCII of 126–130 bytes, and a multi-byte
/// character (2, 3 or 4 bytes) whose last byte lands anywhere from 126 to 131, so that the
/// limit falls inside it; each sometimes with a control character somewhere.
fn id_near_the_limit() -> impl Strategy<Value = String> {
    let ascii = (MAX_ID_LEN - 2..=MAX_ID_LEN + 2).prop_map(|n| "a".repeat(n));
    let straddling = (prop::sample::select(vec!['é', '€', '😀']), 0usize..4).prop_map(|(c, k)| {
        let w = c.len_utf8();
        let mut s = "b".repeat(MAX_ID_LEN + k - w - 1);
        s.push(c);
        s
    });
    let control = prop::sample::select(vec!['\n', '\r', '\t', '\u{7f}', '\u{85}', '\u{9b}', '\0']);
    (
        prop_oneof![ascii, straddling],
        prop::option::of((control, any::<prop::sample::Index>())),
    )
        .prop_map(|(mut id, ctl)| {
            if let Some((c, at)) = ctl {
                let boundaries: Vec<usize> = id.char_indices().map(|(i, _)| i).collect();
                let i = boundaries[at.index(boundaries.len())];
                id.insert(i, c);
            }
            id
        })
}

/// What admission must say about an id: admitted when it is at most 128 bytes without control
/// characters; otherwise refused, before anything copies it. (A U+0000 in a structured event is
/// refused by the scan before parsing, whatever the id's length.)
fn expected_for_id(id: &str, binary: bool) -> Option<Reason> {
    if !binary && id.contains('\0') {
        Some(Reason::Malformed)
    } else if id.len() > MAX_ID_LEN {
        Some(Reason::SchemaValidationFailed)
    } else if id.chars().any(char::is_control) {
        Some(Reason::Malformed)
    } else {
        None
    }
}

/// Ids of a sequence of submissions: a few, so repeats are common.
fn stream_of_events() -> impl Strategy<Value = Vec<(u8, u8, bool)>> {
    // (id number, content variant, signed on NATS or unsigned through the gateway)
    prop::collection::vec((0u8..6, 0u8..2, any::<bool>()), 1..24)
}

fn stamps(i: usize) -> Stamps {
    Stamps {
        record_id: format!("01JD{i:022}"),
        received_at: time(),
        committed_at: time(),
        policy: PolicyStamp::default(),
        sealing: None,
    }
}

proptest! {
    #![proptest_config(Config::with_cases(CASES))]

    /// Any bytes, in either channel, with or without a content type.
    #[test]
    fn arbitrary_bodies_end_as_an_event_or_a_contract_rejection(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        gateway in any::<bool>(),
    ) {
        let channel = if gateway {
            Channel::Gateway { subject: "svc".into() }
        } else {
            Channel::Nats
        };
        let (_, outcome) = admit_with(&body, &[], channel);
        check_outcome(&body, &outcome)?;
        // Random bytes are not a signed CloudEvent.
        prop_assert!(outcome.is_err());
    }

    /// Arbitrary JSON-ish bodies: valid events with a member replaced by an arbitrary value.
    #[test]
    fn events_with_one_member_replaced_end_as_an_event_or_a_contract_rejection(
        member in prop::sample::select(vec![
            "id", "source", "specversion", "type", "time", "datacontenttype", "data",
            "dssematerial", "signedextattrs", "sequence", "tenantid", "subject", "dataschema",
            "data_base64",
        ]),
        value in prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
            Just(json!({"actor": {"id": "x", "type": "user"}})),
            Just(json!([1, "2", null])),
        ],
    ) {
        let mut e: Map<String, Value> =
            serde_json::from_slice(&signed("e1", "alice")).unwrap();
        e.insert(member.to_owned(), value);
        let body = serde_json::to_vec(&e).unwrap();
        let (_, outcome) = admit_with(&body, &[], Channel::Nats);
        check_outcome(&body, &outcome)?;
    }

    /// Headers in any mix: repeats in any case are flagged and refused; the rest ends as usual.
    #[test]
    fn any_header_mix_is_read_consistently(
        hs in headers(),
        structured in any::<bool>(),
    ) {
        let body = if structured { signed("e1", "alice") } else { BINARY_DATA.to_vec() };
        let (repeated, outcome) = admit_with(&body, &hs, Channel::Nats);
        // The names ATP reads, lower-cased: any one given twice must be flagged.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (n, _) in &hs {
            let lower = n.to_ascii_lowercase();
            if lower == "content-type" || lower.starts_with("ce-") {
                *seen.entry(lower).or_default() += 1;
            }
        }
        let mut twice: Vec<&String> = seen.iter().filter(|(_, c)| **c > 1).map(|(n, _)| n).collect();
        let mut flagged: Vec<&String> = repeated.iter().collect();
        twice.sort();
        flagged.sort();
        prop_assert_eq!(twice, flagged);
        if !repeated.is_empty() {
            prop_assert_eq!(outcome.as_ref().map_err(|r| r.reason).err(), Some(Reason::Malformed));
        }
        check_outcome(&body, &outcome)?;
    }

    /// A valid binary-mode event stays valid with its header names in any case, and is refused
    /// when any header it carries is repeated (in any case) or holds a control character.
    #[test]
    fn binary_mode_headers_in_odd_case_repeats_and_control_characters(
        upper in prop::collection::vec(any::<bool>(), 7),
        repeat in prop::option::of((0usize..7, any::<bool>())),
        control in prop::option::of((0usize..6, prop::sample::select(vec!['\r', '\u{1b}', '\u{7f}', '\u{85}']))),
    ) {
        let mut hs = binary_headers("b1");
        for ((name, _), up) in hs.iter_mut().zip(&upper) {
            if *up {
                *name = name.to_ascii_uppercase();
            }
        }
        if let Some((i, same_value)) = repeat {
            let (name, value) = hs[i].clone();
            let value = if same_value { value } else { format!("{value}x") };
            hs.push((name.to_ascii_lowercase(), value));
        }
        // Control characters only in the attributes admission copies (not the signature,
        // whose value is never copied, nor the content type, checked against one literal).
        if let Some((i, c)) = control {
            let i = [1, 2, 3, 4, 0, 1][i];
            hs[i].1.push(c);
        }
        let (_, outcome) = admit_with(BINARY_DATA, &hs, Channel::Nats);
        check_outcome(BINARY_DATA, &outcome)?;
        match (repeat, control) {
            (None, None) => prop_assert!(outcome.is_ok(), "{:?}", outcome.err()),
            (Some(_), _) => prop_assert_eq!(outcome.err().map(|r| r.reason), Some(Reason::Malformed)),
            (None, Some(_)) => prop_assert!(outcome.is_err()),
        }
    }

    /// Ids around the 128-byte limit, in both modes, signed: admitted exactly when they fit
    /// and hold no control character.
    #[test]
    fn ids_around_the_limit_are_admitted_exactly_when_they_fit(
        id in id_near_the_limit(),
        binary in any::<bool>(),
    ) {
        let outcome = if binary {
            admit_with(BINARY_DATA, &binary_headers(&id), Channel::Nats).1
        } else {
            let body = serde_json::to_vec(&{
                let mut e = example_event(&id, URI, time(), "alice", "UPDATE");
                sign_structured(&mut e, &key(), "k1").unwrap();
                e
            }).unwrap();
            let (_, outcome) = admit_with(&body, &[], Channel::Nats);
            check_outcome(&body, &outcome)?;
            outcome
        };
        match expected_for_id(&id, binary) {
            None => prop_assert_eq!(outcome.map(|a| a.id).ok(), Some(id)),
            Some(reason) => {
                prop_assert_eq!(outcome.as_ref().err().map(|r| r.reason), Some(reason));
                // The envelope never copies such an id.
                let r = outcome.err().unwrap();
                let (env, _) = RejectionEnvelope::bounded(
                    RefusalFacts {
                        rejection: r,
                        ingress_seq: 1,
                        tenant_id: "acme".into(),
                        source_id: "crm".into(),
                        received_at: String::new(),
                        rejected_at: String::new(),
                        event_id: Some(id.clone()),
                    },
                    b"{}",
                );
                prop_assert_eq!(env.event_id, None);
            }
        }
    }

    /// Admitted events planned into a partition, then every one submitted again (and again in
    /// another order): one record per id, repeats are duplicates or conflicts, never appends,
    /// and the records chain from genesis and open as canonical bytes.
    #[test]
    fn a_repeat_never_becomes_a_second_record(events in stream_of_events(), seed in any::<u64>()) {
        let mut state = PartitionState::genesis(partition());
        let mut sealed = Vec::new();
        // id → fingerprint of the event recorded under it
        let mut recorded: HashMap<String, atp_core::Digest> = HashMap::new();
        let submissions: Vec<Vec<u8>> = events
            .iter()
            .map(|(n, variant, signed_on_nats)| {
                let id = format!("e{n}");
                let actor = format!("actor{variant}");
                if *signed_on_nats {
                    signed(&id, &actor)
                } else {
                    serde_json::to_vec(&example_event(&id, URI, time(), &actor, "UPDATE")).unwrap()
                }
            })
            .collect();
        let admit_one = |i: usize| {
            let channel = if events[i].2 {
                Channel::Nats
            } else {
                Channel::Gateway { subject: "svc".into() }
            };
            admit_with(&submissions[i], &[], channel).1.unwrap()
        };
        for i in 0..events.len() {
            let a = admit_one(i);
            match state.decide(&a) {
                Decision::Append => {
                    prop_assert!(!recorded.contains_key(&a.id), "{} appended twice", a.id);
                    recorded.insert(a.id.clone(), a.fingerprint);
                    sealed.push(state.append(a, i as u64 + 1, stamps(i)).unwrap());
                }
                Decision::Duplicate(r) => {
                    prop_assert_eq!(recorded.get(&a.id), Some(&a.fingerprint));
                    prop_assert_eq!(r.fingerprint, Some(a.fingerprint));
                }
                Decision::Reject(r) => {
                    prop_assert_eq!(r.reason, Reason::IdempotencyConflict);
                    prop_assert!(recorded.get(&a.id).is_some_and(|f| *f != a.fingerprint));
                }
            }
        }
        // Everything again, rotated: nothing is appended.
        let n = events.len();
        for k in 0..n {
            let i = (k + (seed as usize % n)) % n;
            let d = state.decide(&admit_one(i));
            prop_assert!(
                matches!(d, Decision::Duplicate(_))
                    || matches!(&d, Decision::Reject(r) if r.reason == Reason::IdempotencyConflict),
                "a repeat was decided {:?}",
                d
            );
        }
        prop_assert_eq!(sealed.len(), recorded.len());
        let mut chain = ChainVerifier::new(&partition());
        for s in &sealed {
            let opened = record::open(&s.bytes, true).unwrap();
            prop_assert_eq!(opened.link, s.link);
            chain.push(opened.link.index, opened.link.prev_hash, opened.link.digest).unwrap();
        }
        prop_assert_eq!(chain.len(), recorded.len() as u64);
        prop_assert_eq!(state.next_index, recorded.len() as u64);
    }
}

proptest! {
    #![proptest_config(Config::with_cases(BIG_CASES))]

    /// A signed event padded with whitespace (still the same JSON) to sizes around the limit:
    /// admitted at the limit and below, `TOO_LARGE` above.
    #[test]
    fn sizes_around_the_event_limit_are_decided_exactly(
        delta in -3isize..=3,
        binary in any::<bool>(),
    ) {
        let size = (DEFAULT_MAX_EVENT_BYTES as isize + delta) as usize;
        let (body, hs) = if binary {
            let mut body = BINARY_DATA.to_vec();
            body.resize(size, b' ');
            // The signature covers the body byte for byte in binary mode: sign the padded one.
            let material = dsse::verification_material(&SignedFields {
                id: Some("big"),
                source: Some(URI),
                specversion: Some("1.0"),
                ty: Some("com.example.login"),
                datacontenttype: Some("application/json"),
                time: Some(time()),
                data: &body,
                ..Default::default()
            });
            let mut hs = binary_headers("big");
            hs[5].1 = dsse::sign(&material, &key(), "k1");
            (body, hs)
        } else {
            let mut body = signed("big", "alice");
            body.resize(size, b' ');
            (body, vec![])
        };
        let (_, outcome) = admit_with(&body, &hs, Channel::Nats);
        check_outcome(&body, &outcome)?;
        if size <= DEFAULT_MAX_EVENT_BYTES {
            prop_assert!(outcome.is_ok(), "{} bytes: {:?}", size, outcome.err());
        } else {
            prop_assert_eq!(outcome.err().map(|r| r.reason), Some(Reason::TooLarge));
        }
    }

    /// Envelopes for bodies of every kind and size around the kept-whole limit, with any
    /// detail and any id: never over the cap, always read back, always the body's hash and size.
    #[test]
    fn rejection_envelopes_always_fit_and_read_back(
        kind in 0u8..5,
        delta in -2isize..=2,
        detail in prop_oneof![any::<String>(), "\\PC{0,3000}"],
        event_id in prop::option::of(any::<String>()),
        reason in prop::sample::select(Reason::ALL.to_vec()),
    ) {
        let size = (MAX_KEPT_BYTES as isize + delta) as usize;
        let body: Vec<u8> = match kind {
            // Not JSON: kept as base64.
            0 => vec![0xff; size],
            // JSON that grows when re-printed: `1e9` is printed as `1000000000.0`.
            1 => {
                let mut s = "[1e9".to_owned();
                while s.len() + 5 < size {
                    s.push_str(",1e9");
                }
                s.push(']');
                s.into_bytes()
            }
            // A JSON string full of characters printed as escapes.
            2 => {
                let mut s = "\"".to_owned();
                while s.len() + 7 < size {
                    s.push_str("\\u001f");
                }
                s.push('"');
                s.into_bytes()
            }
            // Small JSON with floats (kept as JSON, must read back as the same numbers).
            3 => br#"{"a":0.1,"b":1e-7,"c":-0.0,"d":5e-324,"e":1.7976931348623157e308}"#.to_vec(),
            _ => Vec::new(),
        };
        check_envelope(Rejection::new(reason, detail), event_id, &body)?;
    }
}
