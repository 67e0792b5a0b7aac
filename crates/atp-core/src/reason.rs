//! Why a submission did not become a record (CONTRACT §2). Codes are part of the contract.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// Not JSON, not I-JSON (duplicate member names, unsafe integers), or not an object.
    Malformed,
    /// Missing or ill-typed CloudEvents attributes, or `data` outside the audit schema.
    SchemaValidationFailed,
    SignatureMissing,
    SignatureInvalid,
    UnknownKey,
    KeyRevoked,
    /// The `tenantid` extension names another tenant than the subject or identity.
    TenantMismatch,
    TooLarge,
    SequenceRegression,
    PolicyDenied,
    /// No source with this id is registered for the tenant.
    UnknownSource,
    /// The CloudEvents `source` is not the URI registered for the source id.
    SourceMismatch,
    /// An event id seen before in this partition, with different content (ADR 0013).
    IdempotencyConflict,
    /// ATP failed on this submission (a defect in ATP, logged at ERROR and counted); it is
    /// kept here so that nothing is lost and the partition goes on (ADR 0013).
    Unprocessable,
    /// A relay (`atp relay kafka`) could not map a message of the producer's own system onto
    /// an event: it forwarded the message as received, with what was missing (ADR 0024).
    Unmappable,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "MALFORMED",
            Self::SchemaValidationFailed => "SCHEMA_VALIDATION_FAILED",
            Self::SignatureMissing => "SIGNATURE_MISSING",
            Self::SignatureInvalid => "SIGNATURE_INVALID",
            Self::UnknownKey => "UNKNOWN_KEY",
            Self::KeyRevoked => "KEY_REVOKED",
            Self::TenantMismatch => "TENANT_MISMATCH",
            Self::TooLarge => "TOO_LARGE",
            Self::SequenceRegression => "SEQUENCE_REGRESSION",
            Self::PolicyDenied => "POLICY_DENIED",
            Self::UnknownSource => "UNKNOWN_SOURCE",
            Self::SourceMismatch => "SOURCE_MISMATCH",
            Self::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            Self::Unprocessable => "UNPROCESSABLE",
            Self::Unmappable => "UNMAPPABLE",
        }
    }

    pub const ALL: [Reason; 15] = [
        Self::Malformed,
        Self::SchemaValidationFailed,
        Self::SignatureMissing,
        Self::SignatureInvalid,
        Self::UnknownKey,
        Self::KeyRevoked,
        Self::TenantMismatch,
        Self::TooLarge,
        Self::SequenceRegression,
        Self::PolicyDenied,
        Self::UnknownSource,
        Self::SourceMismatch,
        Self::IdempotencyConflict,
        Self::Unprocessable,
        Self::Unmappable,
    ];
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason code and a human-readable detail naming the offending part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_the_contract_spells_them() {
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::String(r.code().to_owned())
            );
        }
    }
}

/// Most bytes of a submission an envelope keeps whole. ATP_REJECTED takes messages up to 1 MiB
/// (`streams/ATP_REJECTED.json`); a submission kept as base64 grows by 4/3, so 256 KiB becomes
/// at most ~342 KiB, and re-printed JSON at most doubles (`0e0` → `0.0`): either way, with the
/// detail and the other fields, well under the stream's limit.
pub const MAX_KEPT_BYTES: usize = 256 * 1024;
/// What is kept of a larger submission: its first 16 KiB, enough to see what it was.
pub const KEPT_PREFIX_BYTES: usize = 16 * 1024;
/// Longest detail kept: details quote the offending part, which may be as long as the input.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Largest envelope ATP writes; a JSON submission whose re-printed form would pass this is kept
/// as a base64 prefix instead. 768 KiB leaves a quarter of ATP_REJECTED's 1 MiB for headers.
pub const MAX_ENVELOPE_BYTES: usize = 768 * 1024;

/// What ATP_REJECTED stores for a refused submission (CONTRACT §2, ADR 0013): the reason, and
/// the submission as received (whole when it fits, else a bounded prefix), with its SHA-256 and
/// size so the producer can match it to what they sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectionEnvelope {
    pub reason: Reason,
    pub detail: String,
    pub ingress_seq: u64,
    pub tenant_id: String,
    pub source_id: String,
    pub received_at: String,
    pub rejected_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `json` when `event` is the submission itself, `base64` when it was not I-JSON (or was too
    /// large) and `event` is its bytes, or their first [`KEPT_PREFIX_BYTES`], in base64.
    pub event_encoding: String,
    pub event: serde_json::Value,
    /// `sha256:<hex>` of the submission's bytes as received, whole. Absent on envelopes written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_sha256: Option<String>,
    /// The submission's size in bytes, whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_bytes: Option<u64>,
    /// True when `event` holds only a prefix of the submission.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub event_truncated: bool,
}

/// The facts of one refusal, from which [`RejectionEnvelope::bounded`] builds the envelope.
#[derive(Debug, Clone)]
pub struct RefusalFacts {
    pub rejection: Rejection,
    pub ingress_seq: u64,
    pub tenant_id: String,
    pub source_id: String,
    pub received_at: String,
    pub rejected_at: String,
    pub event_id: Option<String>,
}

impl RejectionEnvelope {
    /// The envelope for `body`, never larger than [`MAX_ENVELOPE_BYTES`] once serialised,
    /// whatever was sent: the submission whole when it is at most [`MAX_KEPT_BYTES`] (as JSON
    /// when it is I-JSON, else base64), else its first [`KEPT_PREFIX_BYTES`] in base64; the
    /// detail cut to [`MAX_DETAIL_BYTES`]; the id dropped when it is not a short, printable
    /// string. Returns the envelope and its serialised bytes.
    pub fn bounded(facts: RefusalFacts, body: &[u8]) -> (Self, Vec<u8>) {
        use sha2::Digest as _;
        let sha = format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)));
        let event_id = facts
            .event_id
            .filter(|id| crate::event::check_text("id", id, crate::event::MAX_ID_LEN).is_ok());
        let mut env = Self {
            reason: facts.rejection.reason,
            detail: cut(facts.rejection.detail, MAX_DETAIL_BYTES),
            ingress_seq: facts.ingress_seq,
            tenant_id: facts.tenant_id,
            source_id: facts.source_id,
            received_at: facts.received_at,
            rejected_at: facts.rejected_at,
            event_id,
            event_encoding: String::new(),
            event: serde_json::Value::Null,
            event_sha256: Some(sha),
            event_bytes: Some(body.len() as u64),
            event_truncated: false,
        };
        if body.len() <= MAX_KEPT_BYTES {
            let (encoding, event) = Self::event_from_bytes(body);
            env.event_encoding = encoding;
            env.event = event;
            if let Ok(bytes) = serde_json::to_vec(&env)
                && bytes.len() <= MAX_ENVELOPE_BYTES
            {
                return (env, bytes);
            }
        }
        let prefix = &body[..body.len().min(KEPT_PREFIX_BYTES)];
        env.event_encoding = "base64".to_owned();
        env.event = serde_json::Value::String(base64_of(prefix));
        env.event_truncated = prefix.len() < body.len();
        // Every field is bounded now (the id and the detail are cut, the event is at most
        // 22 KiB of base64). Serialising strings and numbers cannot fail.
        let bytes = serde_json::to_vec(&env).unwrap_or_default();
        (env, bytes)
    }

    /// Keeps the submission as received: as JSON when it is I-JSON, else base64 of its bytes.
    pub fn event_from_bytes(body: &[u8]) -> (String, serde_json::Value) {
        match crate::canonical::parse_strict(body) {
            Ok(v) => ("json".to_owned(), v),
            Err(_) => (
                "base64".to_owned(),
                serde_json::Value::String(base64_of(body)),
            ),
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

#[cfg(test)]
mod envelope_tests {
    use super::*;

    fn facts(detail: String) -> RefusalFacts {
        RefusalFacts {
            rejection: Rejection::new(Reason::Malformed, detail),
            ingress_seq: 7,
            tenant_id: "acme".into(),
            source_id: "crm".into(),
            received_at: "2026-12-07T00:00:00Z".into(),
            rejected_at: "2026-12-07T00:00:01Z".into(),
            event_id: Some("a-b".into()),
        }
    }

    #[test]
    fn a_small_json_submission_is_kept_whole_with_its_hash() {
        let body = br#"{"id":"x","n":1}"#;
        let (env, bytes) = RejectionEnvelope::bounded(facts("bad".into()), body);
        assert_eq!(env.event_encoding, "json");
        assert_eq!(env.event["id"], "x");
        assert!(!env.event_truncated);
        assert_eq!(env.event_bytes, Some(body.len() as u64));
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        assert_eq!(env.event_sha256, Some(format!("sha256:{sha}")));
        let back: RejectionEnvelope = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn a_large_binary_submission_keeps_a_prefix_and_fits() {
        let body = vec![0xffu8; 900 * 1024];
        let (env, bytes) = RejectionEnvelope::bounded(facts("x".repeat(100_000)), &body);
        assert_eq!(env.event_encoding, "base64");
        assert!(env.event_truncated);
        assert_eq!(env.event_bytes, Some(900 * 1024));
        assert!(env.detail.len() <= MAX_DETAIL_BYTES);
        assert!(bytes.len() < 32 * 1024, "{}", bytes.len());
    }

    #[test]
    fn an_unprintable_event_id_is_not_copied() {
        let mut f = facts("d".into());
        f.event_id = Some("multi\nline".to_owned());
        let (env, _) = RejectionEnvelope::bounded(f, b"{}");
        assert_eq!(env.event_id, None);
        let (env, _) = RejectionEnvelope::bounded(facts("d".into()), b"{}");
        assert_eq!(env.event_id.as_deref(), Some("a-b"));
    }
}
