//! Dead letters: messages a role could not handle after its bounded attempts.
//!
//! A dead letter is a diagnostic envelope, not a copy: it names the message by stream and
//! sequence (the stream keeps it, immutable) and carries its SHA-256, so personal data never
//! spreads into a second place and a replay can prove it handles the very bytes that failed.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Code of a letter for an export that failed every attempt (the exporter's give-up); the one
/// kind of exporter letter a replay can act on.
pub const EXPORT_ATTEMPTS_EXHAUSTED: &str = "EXPORT_ATTEMPTS_EXHAUSTED";

use crate::trace::TraceParent;

/// The roles that dead-letter, as they appear in the subject `atp.dlq.<role>.<tenant>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeadRole {
    /// A ledger or rejected message the read model cannot take.
    Projector,
    /// An export request that cannot be packaged.
    Exporter,
}

impl DeadRole {
    pub const ALL: [DeadRole; 2] = [DeadRole::Projector, DeadRole::Exporter];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadRole::Projector => "projector",
            DeadRole::Exporter => "exporter",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What went wrong with which message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub role: DeadRole,
    /// A stable reason code (`UNPROJECTABLE`, `MALFORMED_REQUEST`, `EXPORT_ATTEMPTS_EXHAUSTED`).
    pub code: String,
    pub detail: String,
    /// Deliveries tried before giving up.
    pub attempts: u32,
    /// The message's `schemaVersion`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// Where the message is kept.
    pub stream: String,
    pub stream_seq: u64,
    pub subject: String,
    pub tenant_id: String,
    /// Lower-case hex SHA-256 of the message payload.
    pub payload_sha256: String,
    pub payload_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// RFC 3339.
    pub dead_at: String,
}

/// The message a dead letter is about.
#[derive(Debug, Clone, Copy)]
pub struct Letter<'a> {
    pub stream: &'a str,
    pub stream_seq: u64,
    pub subject: &'a str,
    pub tenant_id: &'a str,
    pub payload: &'a [u8],
    /// The message's `traceparent` header, if any.
    pub traceparent: Option<&'a str>,
}

impl DeadLetter {
    pub fn new(
        role: DeadRole,
        code: &str,
        detail: impl Into<String>,
        attempts: u32,
        letter: Letter<'_>,
        dead_at: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let schema_version = serde_json::from_slice::<serde_json::Value>(letter.payload)
            .ok()
            .and_then(|v| v.get("schemaVersion")?.as_str().map(str::to_owned));
        DeadLetter {
            role,
            code: code.to_owned(),
            detail: detail.into(),
            attempts,
            schema_version,
            stream: letter.stream.to_owned(),
            stream_seq: letter.stream_seq,
            subject: letter.subject.to_owned(),
            tenant_id: letter.tenant_id.to_owned(),
            payload_sha256: hex::encode(Sha256::digest(letter.payload)),
            payload_bytes: letter.payload.len() as u64,
            trace_id: letter
                .traceparent
                .and_then(TraceParent::parse)
                .map(|t| t.trace_id_hex()),
            dead_at: dead_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// The JetStream message id that makes dead-lettering a message twice store it once.
    pub fn msg_id(&self) -> String {
        format!(
            "dlq:{}:{}:{}",
            self.role.as_str(),
            self.stream,
            self.stream_seq
        )
    }

    /// Whether `payload` is the message this letter is about.
    pub fn matches(&self, payload: &[u8]) -> bool {
        hex::encode(Sha256::digest(payload)) == self.payload_sha256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_names_its_message_without_copying_it() {
        let payload = br#"{"schemaVersion":"atp.record/1","data":{"email":"a@b.c"}}"#;
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .to_utc();
        let d = DeadLetter::new(
            DeadRole::Projector,
            "UNPROJECTABLE",
            "event data has no audit facets",
            3,
            Letter {
                stream: "ATP_LEDGER",
                stream_seq: 42,
                subject: "atp.ledger.acme.crm",
                tenant_id: "acme",
                payload,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            },
            at,
        );
        assert_eq!(d.schema_version.as_deref(), Some("atp.record/1"));
        assert_eq!(
            d.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(d.msg_id(), "dlq:projector:ATP_LEDGER:42");
        assert!(d.matches(payload));
        assert!(!d.matches(b"{}"));
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("a@b.c"), "{json}");
        assert!(
            json.contains(r#""deadAt":"2026-11-23T10:00:00.000Z""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<DeadLetter>(&json).unwrap(), d);
        assert_eq!(DeadRole::parse("exporter"), Some(DeadRole::Exporter));
        assert_eq!(DeadRole::parse("ingest"), None);
    }
}
