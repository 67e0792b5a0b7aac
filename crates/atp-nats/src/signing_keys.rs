//! Public halves of the checkpoint signing keys, kept in the `ATP_SIGNING_KEYS` KV bucket
//! (key: the note key ID in hex). Whoever holds the private keys (the integrity worker's key
//! store) publishes here; gateways serve the JWKS and verifiers read it. Nothing private ever
//! enters NATS.

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use atp_core::keys::PublishedKey;
use futures::StreamExt;

use crate::streams::SIGNING_KEYS_BUCKET;

#[derive(Debug, thiserror::Error)]
pub enum SigningKeysError {
    #[error("signing-key bucket unavailable: {0}")]
    Unavailable(String),
    #[error("signing-key entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

pub async fn bucket(js: &Context) -> Result<Store, SigningKeysError> {
    js.get_key_value(SIGNING_KEYS_BUCKET)
        .await
        .map_err(|e| SigningKeysError::Unavailable(e.to_string()))
}

/// Publishes keys whose entry is missing or differs (idempotent).
pub async fn publish(kv: &Store, keys: &[PublishedKey]) -> Result<(), SigningKeysError> {
    for key in keys {
        let bytes = serde_json::to_vec(key).map_err(|e| SigningKeysError::Corrupt {
            key: key.kid.clone(),
            reason: e.to_string(),
        })?;
        let current = kv
            .get(&key.kid)
            .await
            .map_err(|e| SigningKeysError::Unavailable(e.to_string()))?;
        if current.as_deref() != Some(bytes.as_slice()) {
            kv.put(&key.kid, bytes.into())
                .await
                .map_err(|e| SigningKeysError::Unavailable(e.to_string()))?;
        }
    }
    Ok(())
}

/// Every published key, oldest first (by `notBefore`).
pub async fn list(kv: &Store) -> Result<Vec<PublishedKey>, SigningKeysError> {
    let mut keys = match kv.keys().await {
        Ok(k) => k,
        Err(e) => return Err(SigningKeysError::Unavailable(e.to_string())),
    };
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| SigningKeysError::Unavailable(e.to_string()))?;
        let Some(bytes) = kv
            .get(&k)
            .await
            .map_err(|e| SigningKeysError::Unavailable(e.to_string()))?
        else {
            continue;
        };
        let key: PublishedKey =
            serde_json::from_slice(&bytes).map_err(|e| SigningKeysError::Corrupt {
                key: k.clone(),
                reason: e.to_string(),
            })?;
        out.push(key);
    }
    out.sort_by(|a, b| a.not_before.cmp(&b.not_before));
    Ok(out)
}
