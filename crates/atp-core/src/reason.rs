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
        }
    }

    pub const ALL: [Reason; 12] = [
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

/// What ATP_REJECTED stores for a refused submission (CONTRACT §2).
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
    /// `json` when `event` is the submission itself, `base64` when it was not I-JSON and
    /// `event` is its bytes in base64.
    pub event_encoding: String,
    pub event: serde_json::Value,
}

impl RejectionEnvelope {
    /// Keeps the submission as received: as JSON when it is I-JSON, else base64 of its bytes.
    pub fn event_from_bytes(body: &[u8]) -> (String, serde_json::Value) {
        use base64::Engine as _;
        match crate::canonical::parse_strict(body) {
            Ok(v) => ("json".to_owned(), v),
            Err(_) => (
                "base64".to_owned(),
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            ),
        }
    }
}
