//! Strict I-JSON parsing (RFC 7493) and RFC 8785 canonical bytes.
//!
//! `serde_json::Value` silently keeps the last of duplicate keys and accepts integers that a
//! double cannot hold, so two parties could hash different things from the same bytes. Input is
//! therefore parsed through [`parse_strict`], which refuses both, before anything is signed
//! checked, hashed or stored.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Largest integer magnitude an IEEE 754 double holds exactly (2^53 - 1), the I-JSON bound.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Deepest nesting of objects and arrays accepted. An audit event is a handful of levels deep
/// (envelope, `data`, `actor`); 32 leaves room for producers' extensions while keeping
/// recursion in every later reader (canonicalisation, schema checks) shallow.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("not JSON: {0}")]
    Syntax(String),
    #[error("not I-JSON: {0}")]
    NotIJson(String),
    #[error("cannot canonicalize: {0}")]
    Canonicalize(String),
}

impl CanonicalError {
    /// True when the input was JSON but broke an I-JSON rule (duplicate key, unsafe number).
    pub fn is_i_json_violation(&self) -> bool {
        matches!(self, Self::NotIJson(_))
    }
}

const NOT_I_JSON: &str = "i-json:";

/// RFC 8785 (ECMAScript `Number::toString`) prints a number of magnitude below 10^21 without an
/// exponent.
const INTEGER_PRINTED_BELOW: f64 = 1e21;

struct Strict(Value);

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an I-JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strict, E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "{NOT_I_JSON} integer {v} is beyond ±(2^53-1)"
            )));
        }
        Ok(Strict(Value::Number(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strict, E> {
        if v > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "{NOT_I_JSON} integer {v} is beyond ±(2^53-1)"
            )));
        }
        Ok(Strict(Value::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        // Every double beyond ±(2^53-1) is a whole number, and RFC 8785 prints those below
        // 10^21 as integer literals (`9007199254740993.5` → `9007199254740994`), which the
        // integer rule above refuses: taking them here would write canonical bytes that this
        // parser, and so `record::open` when verifying, cannot read back. Larger ones print
        // with an exponent (`1e+21`) and read back as the same double.
        //
        // Precisely: refused when its canonical literal would be read back as an integer type
        // (it fits u64 or i64) and so meet the integer rule. Literals past those types, such as
        // RFC 8785's own `295147905179352830000` (2^68), are read back as this very double.
        if v.abs() > MAX_SAFE_INTEGER as f64 && v.abs() < INTEGER_PRINTED_BELOW {
            let literal = serde_json_canonicalizer::to_string(&Value::from(v)).unwrap_or_default();
            if literal.parse::<u64>().is_ok() || literal.parse::<i64>().is_ok() {
                return Err(E::custom(format!(
                    "{NOT_I_JSON} number {v} is beyond ±(2^53-1) and its canonical form \
                     {literal} is such an integer"
                )));
            }
        }
        Number::from_f64(v)
            .map(|n| Strict(Value::Number(n)))
            .ok_or_else(|| E::custom(format!("{NOT_I_JSON} number {v} is not finite")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "{NOT_I_JSON} duplicate member name {key:?}"
                )));
            }
            out.insert(key, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// Parses `bytes` as I-JSON: valid UTF-8 JSON, no duplicate member names, integers within
/// ±(2^53-1), nothing after the value. serde_json already refuses lone surrogates and
/// nesting deeper than 128.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, CanonicalError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Strict(v)) => Ok(v),
        Err(e) => {
            let msg = e.to_string();
            match msg.strip_prefix(NOT_I_JSON) {
                Some(rest) => Err(CanonicalError::NotIJson(rest.trim().to_owned())),
                None => Err(CanonicalError::Syntax(msg)),
            }
        }
    }
}

/// [`parse_strict`] for what producers submit, which may also nest no deeper than
/// [`MAX_DEPTH`]. (ATP's own records wrap an event one level deeper, so reading them back uses
/// [`parse_strict`] alone.)
pub fn parse_submission(bytes: &[u8]) -> Result<Value, CanonicalError> {
    match scan(bytes, MAX_DEPTH) {
        Some(Unstorable::TooDeep(at)) => Err(CanonicalError::NotIJson(format!(
            "nesting deeper than {MAX_DEPTH} levels (at byte {at})"
        ))),
        Some(Unstorable::Nul(at)) => Err(CanonicalError::NotIJson(format!(
            "a string holds U+0000 (at byte {at}), which ATP's read models cannot store"
        ))),
        None => parse_strict(bytes),
    }
}

/// The byte offset of the first `\u0000` escape inside a JSON string, if any: U+0000, which
/// PostgreSQL text and jsonb cannot hold.
pub fn nul_at(bytes: &[u8]) -> Option<usize> {
    match scan(bytes, usize::MAX) {
        Some(Unstorable::Nul(at)) => Some(at),
        _ => None,
    }
}

/// What a submission must not hold.
enum Unstorable {
    /// Objects and arrays nested deeper than the cap, first at this byte offset.
    TooDeep(usize),
    /// A `\u0000` escape (PostgreSQL text and jsonb cannot hold U+0000).
    Nul(usize),
}

/// One pass over the raw bytes, before any parsing: nesting depth outside strings, and
/// `\u0000` escapes inside them (a raw NUL is not valid JSON anyway).
fn scan(bytes: &[u8], max: usize) -> Option<Unstorable> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, b'u') if bytes.get(i + 1..i + 5) == Some(b"0000") => {
                    return Some(Unstorable::Nul(i - 1));
                }
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(Unstorable::TooDeep(i));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// RFC 8785 canonical bytes of a value that came from [`parse_strict`] (or was built in code).
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| CanonicalError::Canonicalize(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nesting_deeper_than_the_cap_but_not_brackets_in_strings() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_submission(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert!(
            parse_strict(deep(MAX_DEPTH + 1).as_bytes()).is_ok(),
            "records may nest deeper"
        );
        let e = parse_submission(deep(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(e.is_i_json_violation(), "{e}");
        assert!(e.to_string().contains("nesting deeper than 32"), "{e}");
        let mut nested = String::new();
        for _ in 0..MAX_DEPTH - 1 {
            nested.push_str("{\"a\":");
        }
        nested.push_str("\"[[[[{{{{\\\"]]]]\"");
        nested.push_str(&"}".repeat(MAX_DEPTH - 1));
        assert!(parse_submission(nested.as_bytes()).is_ok(), "{nested}");
    }

    #[test]
    fn refuses_nul_in_strings_but_not_an_escaped_backslash_before_u0000() {
        let e = parse_submission(br#"{"a":"x\u0000y"}"#).unwrap_err();
        assert!(e.is_i_json_violation(), "{e}");
        assert!(e.to_string().contains("U+0000"), "{e}");
        assert!(parse_submission(br#"{"\u0000":1}"#).is_err(), "keys too");
        // A literal backslash followed by "u0000" is six ordinary characters.
        assert!(parse_submission(br#"{"a":"\\u0000"}"#).is_ok());
        assert!(parse_submission(br#"{"a":"\u0041"}"#).is_ok());
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        let e = parse_strict(br#"{"a":1,"b":{"c":1,"c":2}}"#).unwrap_err();
        assert!(e.is_i_json_violation(), "{e}");
        assert!(e.to_string().contains("\"c\""), "{e}");
    }

    #[test]
    fn refuses_integers_a_double_cannot_hold() {
        assert!(parse_strict(b"9007199254740991").is_ok());
        assert!(parse_strict(b"-9007199254740991").is_ok());
        assert!(
            parse_strict(b"9007199254740992")
                .unwrap_err()
                .is_i_json_violation()
        );
        assert!(
            parse_strict(b"-9007199254740992")
                .unwrap_err()
                .is_i_json_violation()
        );
        assert!(
            parse_strict(b"[18446744073709551615]")
                .unwrap_err()
                .is_i_json_violation()
        );
    }

    /// Found by `fuzz/` (target `json`): `9007954790072547.40991` is a double, but its
    /// canonical form `9007954790072548` is an integer beyond ±(2^53-1), so ATP could seal
    /// bytes its own strict parser refuses to read back.
    #[test]
    fn a_number_whose_canonical_form_is_an_unsafe_integer_is_refused() {
        for refused in [
            &b"9007954790072547.40991"[..],
            b"9.007199254740992e15",
            b"-9007199254740993.0",
            b"1.8e19",
            b"[0.5, 123456789012345678901.5e-3]",
        ] {
            let e = parse_strict(refused).unwrap_err();
            assert!(e.is_i_json_violation(), "{e}");
        }
        // At the edges: the largest safe value written as a float, and the smallest
        // magnitude RFC 8785 prints with an exponent, both read back as themselves.
        for kept in [
            &b"9007199254740991.0"[..],
            b"-9.007199254740991e15",
            b"1e21",
            b"1e20",
            b"295147905179352830000",
            b"-1e300",
        ] {
            let v = parse_strict(kept).unwrap();
            let canonical = to_canonical(&v).unwrap();
            let again = parse_strict(&canonical)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&canonical)));
            assert_eq!(again.as_f64(), v.as_f64());
        }
    }

    #[test]
    fn syntax_errors_are_not_i_json_violations() {
        let e = parse_strict(b"{\"a\":").unwrap_err();
        assert!(matches!(e, CanonicalError::Syntax(_)), "{e:?}");
        assert!(matches!(
            parse_strict(b"{} x").unwrap_err(),
            CanonicalError::Syntax(_)
        ));
        assert!(matches!(
            parse_strict(br#""\ud800""#).unwrap_err(),
            CanonicalError::Syntax(_)
        ));
        assert!(matches!(
            parse_strict(b"1e400").unwrap_err(),
            CanonicalError::Syntax(_)
        ));
    }

    #[test]
    fn canonical_form_sorts_keys_and_normalises_numbers() {
        let v =
            parse_strict(br#"{ "b": [1.0, 1e3, "\u00e9"], "a": {"z": null, "y": true} }"#).unwrap();
        assert_eq!(
            String::from_utf8(to_canonical(&v).unwrap()).unwrap(),
            r#"{"a":{"y":true,"z":null},"b":[1,1000,"é"]}"#
        );
    }
}
