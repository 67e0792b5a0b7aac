//! The producer registry: which sources a tenant has, the CloudEvents `source` each stands for,
//! and the Ed25519 keys allowed to sign its events.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::names::{SourceId, TenantId};

/// Events larger than this are `TOO_LARGE` unless the source's registration says otherwise.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerKey {
    pub key_id: String,
    /// Raw 32-byte Ed25519 public key, base64 (standard alphabet) on the wire.
    #[serde(with = "b64_key")]
    pub public_key: [u8; 32],
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The decompressed key, made once: decompression costs about as much as a quarter of a
    /// signature check, and every event of the source needs it.
    #[serde(skip)]
    decompressed: OnceLock<Option<VerifyingKey>>,
}

impl ProducerKey {
    pub fn new(key_id: impl Into<String>, public_key: [u8; 32], created_at: DateTime<Utc>) -> Self {
        Self {
            key_id: key_id.into(),
            public_key,
            created_at,
            revoked_at: None,
            decompressed: OnceLock::new(),
        }
    }

    /// The Ed25519 key, or `None` if the bytes are not a valid point.
    pub fn verifying_key(&self) -> Option<&VerifyingKey> {
        self.decompressed
            .get_or_init(|| VerifyingKey::from_bytes(&self.public_key).ok())
            .as_ref()
    }
}

/// The source of every tenant under which ATP records its own admin actions (ADR 0010).
pub const SYSTEM_SOURCE: &str = "atp-admin";
/// The CloudEvents `source` of ATP's admin events.
pub const SYSTEM_SOURCE_URI: &str = "urn:atp:admin";
/// The tenant of admin actions that concern no one tenant (signing-key rotation, replays).
pub const SYSTEM_TENANT: &str = "atp";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRegistration {
    pub tenant_id: TenantId,
    pub source_id: SourceId,
    /// The CloudEvents `source` attribute this source's events carry.
    pub source_uri: String,
    #[serde(default)]
    pub keys: Vec<ProducerKey>,
    /// Direct NATS submissions must be signed unless this is set (CONTRACT §2).
    #[serde(default)]
    pub allow_unsigned: bool,
    #[serde(default = "default_max")]
    pub max_event_bytes: usize,
    /// Accept top-level `data` members outside the audit schema.
    #[serde(default)]
    pub allow_unknown_data_fields: bool,
    /// Shared secrets for webhooks signed with HMAC (Standard Webhooks `v1`,
    /// `POST /ingest/webhooks/{sourceId}`); webhooks signed with Ed25519 (`v1a`) verify
    /// against [`SourceRegistration::keys`] instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_secrets: Vec<WebhookSecret>,
}

/// A source's webhook HMAC secret. It never prints; on the wire (the registry bucket, which
/// only ATP's roles read) it is `whsec_` and base64, as Standard Webhooks writes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecret {
    pub id: String,
    #[serde(with = "whsec")]
    pub secret: Vec<u8>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("id", &self.id)
            .field("secret", &"***")
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

impl WebhookSecret {
    /// The secret as a sender configures it: `whsec_<base64>`.
    pub fn to_whsec(&self) -> String {
        use base64::Engine as _;
        format!(
            "{}{}",
            crate::webhook::SECRET_PREFIX,
            base64::engine::general_purpose::STANDARD.encode(&self.secret)
        )
    }
}

mod whsec {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!(
            "{}{}",
            crate::webhook::SECRET_PREFIX,
            STANDARD.encode(k)
        ))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let b64 = s
            .strip_prefix(crate::webhook::SECRET_PREFIX)
            .ok_or_else(|| serde::de::Error::custom("a webhook secret starts with whsec_"))?;
        STANDARD.decode(b64).map_err(serde::de::Error::custom)
    }
}

fn default_max() -> usize {
    DEFAULT_MAX_EVENT_BYTES
}

impl SourceRegistration {
    pub fn new(tenant_id: TenantId, source_id: SourceId, source_uri: impl Into<String>) -> Self {
        Self {
            tenant_id,
            source_id,
            source_uri: source_uri.into(),
            keys: Vec::new(),
            allow_unsigned: false,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            allow_unknown_data_fields: false,
            webhook_secrets: Vec::new(),
        }
    }
    /// The registration of a tenant's admin-trail source: events on it are accepted unsigned,
    /// because only ATP's admin identity may publish to its subject (ADR 0008, 0010).
    pub fn system(tenant_id: TenantId) -> Result<Self, crate::names::NameError> {
        let mut reg = Self::new(tenant_id, SourceId::new(SYSTEM_SOURCE)?, SYSTEM_SOURCE_URI);
        reg.allow_unsigned = true;
        Ok(reg)
    }

    pub fn key(&self, key_id: &str) -> Option<&ProducerKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }
}

mod b64_key {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(k))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = STANDARD.decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("an Ed25519 public key is 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_source_is_a_valid_unsigned_source() {
        let reg = SourceRegistration::system(TenantId::new(SYSTEM_TENANT).unwrap()).unwrap();
        assert_eq!(reg.source_id.as_str(), SYSTEM_SOURCE);
        assert!(reg.allow_unsigned && reg.keys.is_empty());
    }
}
