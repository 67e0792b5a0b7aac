//! Fuzzes the strict I-JSON parser and RFC 8785 canonicalisation: whatever parses has a
//! canonical form, that form parses back to the same value (numbers compared as the doubles
//! I-JSON says they are) and is a fixed point: canonicalising it again changes nothing.
#![no_main]

use atp_core::canonical::{parse_strict, parse_submission, to_canonical};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Equal as I-JSON values: `1`, `1.0` and `1e0` are one number.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let strict = parse_strict(data);
    let Ok(value) = parse_submission(data) else {
        return;
    };
    // A submission is a strict parse with tighter limits, never a different reading.
    assert!(matches!(&strict, Ok(v) if v == &value));
    let canonical = match to_canonical(&value) {
        Ok(c) => c,
        Err(e) => panic!("a parsed value has no canonical form: {e}"),
    };
    let again = match parse_submission(&canonical) {
        Ok(v) => v,
        Err(e) => panic!("canonical form does not parse: {e}"),
    };
    assert!(
        same(&value, &again),
        "canonical form reads as another value"
    );
    match to_canonical(&again) {
        Ok(c) => assert_eq!(c, canonical, "canonicalisation is not idempotent"),
        Err(e) => panic!("canonical form has no canonical form: {e}"),
    }
});
