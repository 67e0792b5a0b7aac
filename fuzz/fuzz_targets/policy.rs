//! Fuzzes a tenant's privacy policy document (the body of `PUT /api/v1/policy`, hostile like
//! any input) and what it decides: parsing never panics; a document that parses is valid, and
//! what it classifies covers every value of any `data` once, never below the default and with
//! the record's classification the highest of them; its JSON form parses back to itself.
#![no_main]

use atp_core::policy::{self, Classification};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|input: &[u8]| {
    // The first half is the document, the rest a `data` to classify (when it is JSON).
    let cut = input.len() / 2;
    let (doc, data) = input.split_at(cut);
    let Ok(p) = policy::parse(doc) else {
        return;
    };
    assert_eq!(p.validate(), Ok(()));
    let again = serde_json::to_vec(&p).expect("a parsed policy serialises");
    assert_eq!(policy::parse(&again).expect("and parses back"), p);
    let data = serde_json::from_slice::<Value>(data).unwrap_or_else(|_| {
        json!({"actor": {"id": "u-1", "type": "user"}, "action": "READ",
               "resource": {"type": "t", "id": "1"}, "attributes": {"a": 1, "b/c": "x"}})
    });
    let c = p.classify("src", "type", &data);
    for f in &c.fields {
        assert!(f.classification <= c.classification);
        assert!(p.duration(&f.retention_policy_id).is_some() || f.retention_policy_id == p.retention.default);
        assert!(data.pointer(&f.path).is_some() || f.path.is_empty(), "{} not in data", f.path);
    }
    assert!(c.classification >= p.default_classification);
    assert!(p.readable(&[atp_core::role::Permission::Privacy]).len() <= Classification::ALL.len());
});
