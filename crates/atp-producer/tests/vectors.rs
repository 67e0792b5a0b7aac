//! The cross-language vectors: `tests/vectors/producer/inputs.json`, signed by every SDK
//! (Rust here, Python and TypeScript in `sdk/`), must give exactly
//! `tests/vectors/producer/expected.json`: the same canonical data, verification material and
//! `dssematerial` (Ed25519 signatures are deterministic). `ATP_BLESS_VECTORS=1` rewrites the
//! expected file from this SDK; review its diff like code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use atp_producer::{AuditEvent, Producer, Signer, Source};
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/producer")
}

fn sign(input: &Value) -> Value {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap().to_owned();
    let seed: [u8; 32] = hex::decode(s(input, "seed")).unwrap().try_into().unwrap();
    let source = Source::new(
        &s(input, "tenant"),
        &s(input, "source"),
        &s(input, "sourceUri"),
    )
    .unwrap();
    let producer = Producer::new(
        source,
        Signer::new(SigningKey::from_bytes(&seed), s(input, "keyId")),
    );
    let e = &input["event"];
    let time: DateTime<Utc> = s(e, "time").parse().unwrap();
    let mut ev = AuditEvent::new(s(e, "type"))
        .id(s(e, "id"))
        .time(time)
        .actor(s(&e["actor"], "id"), s(&e["actor"], "type"))
        .action(s(e, "action"))
        .resource(s(&e["resource"], "type"), s(&e["resource"], "id"));
    if let Some(sub) = e["subject"].as_str() {
        ev = ev.subject(sub);
    }
    if let Some(seq) = e["sequence"].as_str() {
        ev = ev.sequence(seq.parse().unwrap());
    }
    if let Some(o) = e["outcome"].as_str() {
        ev = ev.outcome(o);
    }
    for (k, v) in e["attributes"].as_object().unwrap() {
        ev = ev.attribute(k, v.clone());
    }
    let signed = producer.sign(ev).unwrap();
    let body: Value = serde_json::from_slice(signed.body()).unwrap();
    let canonical = atp_core::canonical::to_canonical(&body["data"]).unwrap();
    let dsse = body["dssematerial"].as_str().unwrap().to_owned();
    let material = atp_core::dsse::Envelope::decode(&dsse).unwrap().payload;
    json!({
        "name": input["name"],
        "canonicalData": String::from_utf8(canonical).unwrap(),
        "material": hex::encode(material),
        "dssematerial": dsse,
        "event": body,
    })
}

#[test]
fn every_input_signs_into_the_expected_bytes() {
    let inputs: Vec<Value> =
        serde_json::from_slice(&std::fs::read(vectors().join("inputs.json")).unwrap()).unwrap();
    let got: Vec<Value> = inputs.iter().map(sign).collect();
    let path = vectors().join("expected.json");
    if std::env::var_os("ATP_BLESS_VECTORS").is_some() {
        let mut text = serde_json::to_string_pretty(&got).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    let want: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "vector {}", w["name"]);
    }
}
