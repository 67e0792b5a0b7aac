//! Data-subject bucket keys in the `ATP_SUBJECT_KEYS` KV bucket (ADR 0019), stored only
//! wrapped by the tenant key. This module moves opaque wrapped bytes; wrapping, caching and
//! the tenant key are the runtime's (`atp_runtime::keyring`).
//!
//! Two entries per key:
//! - `<tenant>.s.<pseudonym>.<retention policy>.<bucket>` → the key id: which key seals a
//!   subject's values under a policy in a time bucket (`atp_core::policy::bucket_of`). The
//!   pseudonym is a keyed hash of the subject id, never the id.
//! - `<tenant>.k.<kid>` → the wrapped key: what opens values sealed under `kid`. A key id is
//!   `<retention policy>.<bucket>.<32 hex>`: retention finds what expires from the ids alone.
//!
//! The wrapped key is written before the name that points to it, so a name always resolves;
//! a key whose name lost a creation race is an orphan nothing uses.

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{Operation, Store};
use atp_core::TenantId;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::streams::SUBJECT_KEYS_BUCKET;

#[derive(Debug, thiserror::Error)]
pub enum SubjectKeysError {
    #[error("subject-key bucket unavailable: {0}")]
    Unavailable(String),
    #[error("subject-key entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

fn unavailable(e: impl std::fmt::Display) -> SubjectKeysError {
    SubjectKeysError::Unavailable(e.to_string())
}

/// One wrapped key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    /// Nonce and ciphertext of the 32-byte key under the tenant key, base64.
    pub wrapped: String,
    pub retention_policy_id: String,
    /// The time bucket the key covers.
    pub bucket: String,
    /// The subject's pseudonym: which name to remove with the key when it expires.
    pub pseudonym: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Which key a subject's values use under one policy in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyName {
    pub tenant: TenantId,
    /// Lower-case hex: safe as a KV token.
    pub pseudonym: String,
    pub retention_policy_id: String,
    pub bucket: String,
}

impl KeyName {
    /// The KV key of the name.
    pub fn key(&self) -> String {
        format!(
            "{}.s.{}.{}.{}",
            self.tenant, self.pseudonym, self.retention_policy_id, self.bucket
        )
    }
}

fn kid_key(tenant: &TenantId, kid: &str) -> String {
    format!("{tenant}.k.{kid}")
}

pub async fn bucket(js: &Context) -> Result<Store, SubjectKeysError> {
    js.get_key_value(SUBJECT_KEYS_BUCKET)
        .await
        .map_err(unavailable)
}

/// The key id `name` points to, if any.
pub async fn kid_of(kv: &Store, name: &KeyName) -> Result<Option<String>, SubjectKeysError> {
    live(kv, &name.key())
        .await?
        .map(|b| {
            String::from_utf8(b).map_err(|e| SubjectKeysError::Corrupt {
                key: name.key(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// The wrapped key `kid` of `tenant` (`None`: never existed, or destroyed).
pub async fn wrapped(
    kv: &Store,
    tenant: &TenantId,
    kid: &str,
) -> Result<Option<WrappedKey>, SubjectKeysError> {
    let key = kid_key(tenant, kid);
    live(kv, &key)
        .await?
        .map(|b| {
            serde_json::from_slice(&b).map_err(|e| SubjectKeysError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

async fn live(kv: &Store, key: &str) -> Result<Option<Vec<u8>>, SubjectKeysError> {
    Ok(match kv.entry(key).await.map_err(unavailable)? {
        Some(e) if e.operation == Operation::Put => Some(e.value.to_vec()),
        _ => None,
    })
}

/// Stores a new wrapped key `kid` and points `name` at it, unless `name` already points at a
/// key (another worker won the race): returns the key id `name` points to either way.
pub async fn create(
    kv: &Store,
    name: &KeyName,
    kid: &str,
    key: &WrappedKey,
) -> Result<String, SubjectKeysError> {
    let bytes = serde_json::to_vec(key).map_err(|e| SubjectKeysError::Corrupt {
        key: kid.to_owned(),
        reason: e.to_string(),
    })?;
    kv.put(kid_key(&name.tenant, kid), bytes.into())
        .await
        .map_err(unavailable)?;
    match kv.create(name.key(), kid.to_owned().into()).await {
        Ok(_) => Ok(kid.to_owned()),
        Err(e) => match kid_of(kv, name).await? {
            Some(winner) => {
                // Ours is an orphan: nothing was sealed with it.
                let _ = kv.purge(kid_key(&name.tenant, kid)).await;
                Ok(winner)
            }
            None => Err(unavailable(e)),
        },
    }
}

/// Every key name of a subject: what erasure destroys.
pub async fn names_of_subject(
    kv: &Store,
    tenant: &TenantId,
    pseudonym: &str,
) -> Result<Vec<(String, String)>, SubjectKeysError> {
    entries(kv, &format!("{tenant}.s.{pseudonym}.>")).await
}

/// `(entry key, key id)` of every live name matching `filter` (a KV key pattern): the last
/// message of each matching key, read with an ordered consumer until none is pending.
async fn entries(kv: &Store, filter: &str) -> Result<Vec<(String, String)>, SubjectKeysError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let consumer = kv
        .stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}{filter}", kv.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(unavailable)?;
        let pending = m.info().map_err(unavailable)?.pending;
        let deleted = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some();
        if !deleted && let Some(key) = m.subject.as_str().strip_prefix(&kv.prefix) {
            let kid =
                String::from_utf8(m.payload.to_vec()).map_err(|e| SubjectKeysError::Corrupt {
                    key: key.to_owned(),
                    reason: e.to_string(),
                })?;
            out.push((key.to_owned(), kid));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Destroys key `kid` and then the name `entry` that pointed to it: purged, so no revision
/// keeps the wrapped bytes. Idempotent.
pub async fn destroy(
    kv: &Store,
    tenant: &TenantId,
    entry: &str,
    kid: &str,
) -> Result<(), SubjectKeysError> {
    kv.purge(kid_key(tenant, kid)).await.map_err(unavailable)?;
    kv.purge(entry).await.map_err(unavailable)?;
    Ok(())
}

/// Destroys key `kid` alone (its name points elsewhere, or is gone). Idempotent.
pub async fn destroy_key_only(
    kv: &Store,
    tenant: &TenantId,
    kid: &str,
) -> Result<(), SubjectKeysError> {
    kv.purge(kid_key(tenant, kid)).await.map_err(unavailable)
}
