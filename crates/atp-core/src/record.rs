//! Records: what an accepted event becomes (CONTRACT §3), and their canonical bytes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::{self, CanonicalError};
use crate::chain::{ChainLink, Digest, chain_hash};
use crate::event::ProducerStamp;
use crate::policy::PolicyStamp;

pub const SCHEMA_VERSION: &str = "1";

/// A record as a struct. Its identity is its canonical bytes ([`SealedRecord::bytes`]); this
/// struct is for building and reading, never for hashing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub schema_version: String,
    pub record_id: String,
    pub tenant_id: String,
    pub source_id: String,
    pub chain_index: u64,
    pub prev_hash: Digest,
    pub received_at: String,
    pub committed_at: String,
    pub policy: PolicyStamp,
    pub producer: ProducerStamp,
    pub event: Value,
}

/// Timestamps on records: RFC 3339 UTC with microseconds, so they sort as strings.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A record's canonical bytes and the chain link they make.
#[derive(Debug, Clone)]
pub struct SealedRecord {
    pub bytes: Vec<u8>,
    pub link: ChainLink,
    pub record_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error("record is not valid: {0}")]
    Shape(String),
    #[error("stored bytes are not in canonical form")]
    NotCanonical,
}

impl Record {
    /// Canonicalises once and hashes those bytes.
    pub fn seal(&self) -> Result<SealedRecord, RecordError> {
        // Straight from the struct: JCS sorts members itself, so no intermediate Value copy.
        let bytes = serde_json_canonicalizer::to_vec(self)
            .map_err(|e| RecordError::Canonical(CanonicalError::Canonicalize(e.to_string())))?;
        let digest = Digest::of(&bytes);
        let link = ChainLink {
            index: self.chain_index,
            prev_hash: self.prev_hash,
            digest,
            chain_hash: chain_hash(&self.prev_hash, &digest),
        };
        Ok(SealedRecord {
            bytes,
            link,
            record_id: self.record_id.clone(),
        })
    }
}

/// A record read back from stored bytes, with the link those exact bytes make.
#[derive(Debug, Clone)]
pub struct OpenedRecord {
    pub record: Record,
    pub link: ChainLink,
}

/// Parses stored record bytes and derives their link from the bytes as stored.
/// `check_canonical` re-canonicalises to prove the bytes are in canonical form (verifiers do;
/// the hot path, reading its own ledger, need not).
pub fn open(bytes: &[u8], check_canonical: bool) -> Result<OpenedRecord, RecordError> {
    let record: Record = if check_canonical {
        let value = canonical::parse_strict(bytes)?;
        if canonical::to_canonical(&value)? != bytes {
            return Err(RecordError::NotCanonical);
        }
        serde_json::from_value(value).map_err(|e| RecordError::Shape(e.to_string()))?
    } else {
        // ATP's own ledger bytes, checked when written: one pass, no intermediate Value.
        serde_json::from_slice(bytes).map_err(|e| RecordError::Shape(e.to_string()))?
    };
    let digest = Digest::of(bytes);
    let link = ChainLink {
        index: record.chain_index,
        prev_hash: record.prev_hash,
        digest,
        chain_hash: chain_hash(&record.prev_hash, &digest),
    };
    Ok(OpenedRecord { record, link })
}

/// The fields a chain walk needs, read without building the whole record.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordHead<'a> {
    #[serde(borrow)]
    pub record_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub tenant_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub source_id: std::borrow::Cow<'a, str>,
    pub chain_index: u64,
    pub prev_hash: Digest,
}

/// Reads a record's head and derives the link its bytes make: the fast path of chain walks
/// (the integrity worker, `atp verify`), which hash every record but need few of its fields.
pub fn head(bytes: &[u8]) -> Result<(RecordHead<'_>, ChainLink), RecordError> {
    let head: RecordHead<'_> =
        serde_json::from_slice(bytes).map_err(|e| RecordError::Shape(e.to_string()))?;
    let digest = Digest::of(bytes);
    let link = ChainLink {
        index: head.chain_index,
        prev_hash: head.prev_hash,
        digest,
        chain_hash: chain_hash(&head.prev_hash, &digest),
    };
    Ok((head, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            schema_version: SCHEMA_VERSION.to_owned(),
            record_id: "01JD000000000000000000000A".to_owned(),
            tenant_id: "acme".to_owned(),
            source_id: "crm".to_owned(),
            chain_index: 0,
            prev_hash: Digest::of(b"atp:chain:v1:acme:crm"),
            received_at: "2026-11-23T10:00:00.000000Z".to_owned(),
            committed_at: "2026-11-23T10:00:00.001000Z".to_owned(),
            policy: PolicyStamp::default(),
            producer: ProducerStamp {
                key_id: Some("k1".to_owned()),
                auth: "dsse-ed25519".to_owned(),
            },
            event: serde_json::json!({"specversion": "1.0", "id": "e1", "data": {"b": 1, "a": 2}}),
        }
    }

    #[test]
    fn sealed_bytes_are_canonical_and_the_digest_is_theirs() {
        let sealed = sample().seal().unwrap();
        let text = String::from_utf8(sealed.bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"chainIndex":0,"committedAt":"#),
            "{text}"
        );
        assert!(text.contains(r#""data":{"a":2,"b":1}"#), "{text}");
        assert_eq!(sealed.link.digest, Digest::of(&sealed.bytes));
        let opened = open(&sealed.bytes, true).unwrap();
        assert_eq!(opened.record, sample());
        assert_eq!(opened.link, sealed.link);
        let (head, link) = head(&sealed.bytes).unwrap();
        assert_eq!(link, sealed.link);
        assert_eq!((head.tenant_id.as_ref(), head.chain_index), ("acme", 0));
    }

    #[test]
    fn non_canonical_bytes_are_caught_when_asked() {
        let sealed = sample().seal().unwrap();
        let pretty =
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&sealed.bytes).unwrap())
                .unwrap();
        assert!(matches!(
            open(&pretty, true),
            Err(RecordError::NotCanonical)
        ));
        // Unchecked, the pretty bytes open but give another digest: hashes follow stored bytes.
        assert_ne!(
            open(&pretty, false).unwrap().link.digest,
            sealed.link.digest
        );
    }
}
