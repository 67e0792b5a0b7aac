//! Disclosures (CONTRACT §8, ADR 0020): the clear values of a bundle's sealed values that its
//! requester may read, each with the field key that opens it, so `atp verify` can prove the
//! value is the one sealed in the hashed record without trusting ATP.
//!
//! `disclosures.jsonl` has one RFC 8785 line per record with disclosed values, in record order:
//! `{chainIndex, recordId, sourceId, values: [{fieldKey, path, value}]}`, `values` sorted by
//! `path` (bytewise), each path once. A field key opens one value of one record (ADR 0019):
//! disclosing it gives away nothing else.
//!
//! Both halves live here: [`disclose`] builds a record's line from its bytes and the bucket
//! keys its requester may use; [`check`] verifies a line against the record's bytes.

use std::collections::BTreeMap;

use atp_core::canonical;
use atp_core::policy::Classification;
use atp_core::privacy::{self, BucketKey, FieldKey, Place, SealedValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One line of `disclosures.jsonl`: the disclosed values of one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisclosureLine {
    pub chain_index: u64,
    pub record_id: String,
    pub source_id: String,
    /// Sorted by `path`, each path once; never empty.
    pub values: Vec<DisclosedValue>,
}

/// One disclosed value: where it is in the event's `data`, the key that opens it, the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisclosedValue {
    /// The field key (32 bytes), base64 with padding.
    pub field_key: String,
    /// JSON Pointer into the event's `data`: the sealed value's place.
    pub path: String,
    /// The clear value: what the sealed value opens to.
    pub value: Value,
}

impl DisclosureLine {
    /// The line's bytes: RFC 8785 (a value may hold any JSON, so serde's own output is not
    /// canonical in general), without the newline.
    pub fn to_canonical(&self) -> Result<Vec<u8>, canonical::CanonicalError> {
        let value = serde_json::to_value(self)
            .map_err(|e| canonical::CanonicalError::Canonicalize(e.to_string()))?;
        canonical::to_canonical(&value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisclosureError {
    /// The record bytes are not a record with an event.
    #[error("not a record: {0}")]
    Record(String),
    /// A sealed value does not open with the key its `kid` names: the stored record or the
    /// key store is not what sealed it.
    #[error("{0}")]
    Opening(String),
}

/// What a bundle's verification found wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The line is not a disclosure line in canonical form.
    #[error("{0}")]
    Malformed(String),
    /// The line does not match the record: no sealed value at a path, a key that does not
    /// open it, or a clear value other than the one sealed.
    #[error("{0}")]
    Mismatch(String),
}

/// The part of a record a disclosure is about.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sealed {
    record_id: String,
    tenant_id: String,
    source_id: String,
    chain_index: u64,
    event: Map<String, Value>,
}

fn read(record: &[u8]) -> Result<(Sealed, Value), String> {
    let r: Sealed = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    let data = privacy::data_of(&r.event).unwrap_or(Value::Null);
    Ok((r, data))
}

/// The disclosure line of `record` (its stored bytes): every sealed value whose classification
/// `may_read` allows and whose bucket key is in `keys` (by `kid`), opened with its field key.
/// `None` when nothing is disclosed.
pub fn disclose(
    record: &[u8],
    keys: &[BucketKey],
    may_read: impl Fn(&SealedValue) -> bool,
) -> Result<Option<DisclosureLine>, DisclosureError> {
    let (r, data) = read(record).map_err(DisclosureError::Record)?;
    let mut values = BTreeMap::new();
    for (path, sealed) in privacy::sealed_values(&data) {
        if !may_read(&sealed) {
            continue;
        }
        let Some(bucket) = keys.iter().find(|k| k.kid == sealed.kid) else {
            continue;
        };
        let place = Place {
            tenant: &r.tenant_id,
            source: &r.source_id,
            record_id: &r.record_id,
            path: &path,
        };
        let key = privacy::field_key(bucket, &place);
        let value = privacy::open(&key, &place, &sealed)
            .map_err(|e| DisclosureError::Opening(format!("record {}: {e}", r.record_id)))?;
        values.insert(
            path.clone(),
            DisclosedValue {
                field_key: key.to_base64(),
                path,
                value,
            },
        );
    }
    if values.is_empty() {
        return Ok(None);
    }
    Ok(Some(DisclosureLine {
        chain_index: r.chain_index,
        record_id: r.record_id,
        source_id: r.source_id,
        values: values.into_values().collect(),
    }))
}

/// Parses one line of `disclosures.jsonl`, holding it to its canonical form and its members
/// ([`check`] holds its values to their order).
pub fn parse(line: &[u8]) -> Result<DisclosureLine, CheckError> {
    let value = canonical::parse_strict(line)
        .map_err(|e| CheckError::Malformed(format!("not I-JSON: {e}")))?;
    if canonical::to_canonical(&value).ok().as_deref() != Some(line) {
        return Err(CheckError::Malformed(
            "not RFC 8785 canonical JSON".to_owned(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| CheckError::Malformed(format!("not a disclosure line: {e}")))
}

/// Checks `line` against `record` (the bundle's record it names): each disclosed value must be
/// a sealed value of the record at its path, the disclosed key must open it under the
/// associated data rebuilt from the record (its tenant, source, id and the path), and what it
/// opens to must be the disclosed value (compared as RFC 8785 bytes). Returns how many values
/// it proved.
pub fn check(line: &DisclosureLine, record: &[u8]) -> Result<usize, CheckError> {
    let (r, data) = read(record).map_err(|e| CheckError::Mismatch(format!("its record: {e}")))?;
    if (r.record_id.as_str(), r.source_id.as_str(), r.chain_index)
        != (
            line.record_id.as_str(),
            line.source_id.as_str(),
            line.chain_index,
        )
    {
        return Err(CheckError::Mismatch(format!(
            "it names record {} ({} chain index {}), not {}",
            line.record_id, line.source_id, line.chain_index, r.record_id
        )));
    }
    if line.values.is_empty() {
        return Err(CheckError::Malformed("it discloses no value".to_owned()));
    }
    if let Some(w) = line
        .values
        .windows(2)
        .find(|w| w[0].path.as_bytes() >= w[1].path.as_bytes())
    {
        return Err(CheckError::Malformed(format!(
            "its values are not sorted by path, each once ({:?} before {:?})",
            w[0].path, w[1].path
        )));
    }
    for v in &line.values {
        let at = &v.path;
        let sealed = data
            .pointer(at)
            .and_then(privacy::as_sealed)
            .ok_or_else(|| {
                CheckError::Mismatch(format!("the record has no sealed value at {at}"))
            })?;
        let key = FieldKey::from_base64(&v.field_key).ok_or_else(|| {
            CheckError::Malformed(format!("the field key of {at} is not 32 bytes of base64"))
        })?;
        let place = Place {
            tenant: &r.tenant_id,
            source: &r.source_id,
            record_id: &r.record_id,
            path: at,
        };
        let clear = privacy::open(&key, &place, &sealed).map_err(|_| {
            CheckError::Mismatch(format!("the disclosed key does not open the value at {at}"))
        })?;
        let same = canonical::to_canonical(&clear)
            .ok()
            .zip(canonical::to_canonical(&v.value).ok())
            .is_some_and(|(a, b)| a == b);
        if !same {
            return Err(CheckError::Mismatch(format!(
                "the value disclosed at {at} is not the one sealed there"
            )));
        }
    }
    Ok(line.values.len())
}

/// Whether the sealed value's classification is among `readable`.
pub fn readable_by(readable: &[Classification]) -> impl Fn(&SealedValue) -> bool + '_ {
    move |s| readable.contains(&s.cls)
}
