//! The producer registry, kept in the `ATP_PRODUCERS` KV bucket (key `<tenant>.<source>`).
//!
//! The ingest worker needs only NATS to decide on an event, so the registry lives beside the
//! streams rather than in PostgreSQL. Workers hold a cache fed by a KV watch (so a revocation
//! takes effect within milliseconds) and fall back to a direct read on a miss (so a source
//! registered a moment ago is never refused as unknown).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{Operation, Store};
use atp_core::PartitionKey;
use atp_core::registry::SourceRegistration;
use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("producer registry unavailable: {0}")]
    Unavailable(String),
    #[error("registry entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

pub fn key(p: &PartitionKey) -> String {
    format!("{}.{}", p.tenant, p.source)
}

/// Reads one registration.
pub async fn get(
    kv: &Store,
    p: &PartitionKey,
) -> Result<Option<SourceRegistration>, RegistryError> {
    let k = key(p);
    let entry = kv
        .get(&k)
        .await
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    entry
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                key: k.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

/// Writes one registration (create or replace).
pub async fn put(kv: &Store, reg: &SourceRegistration) -> Result<(), RegistryError> {
    let p = PartitionKey::new(reg.tenant_id.clone(), reg.source_id.clone());
    let bytes = serde_json::to_vec(reg).map_err(|e| RegistryError::Corrupt {
        key: key(&p),
        reason: e.to_string(),
    })?;
    kv.put(key(&p), bytes.into())
        .await
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    Ok(())
}

/// Every registration of a tenant.
pub async fn list_tenant(
    kv: &Store,
    tenant: &atp_core::TenantId,
) -> Result<Vec<SourceRegistration>, RegistryError> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    let prefix = format!("{tenant}.");
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if let Some(source) = k.strip_prefix(&prefix) {
            let Ok(source) = atp_core::SourceId::new(source) else {
                continue;
            };
            if let Some(r) = get(kv, &PartitionKey::new(tenant.clone(), source)).await? {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.source_id.cmp(&b.source_id));
    Ok(out)
}

/// A watched, in-memory view of the registry.
#[derive(Clone)]
pub struct RegistryCache {
    kv: Store,
    map: Arc<RwLock<HashMap<String, Arc<SourceRegistration>>>>,
}

impl RegistryCache {
    /// Starts watching; entries arrive in the background. Lookups that miss read the KV.
    pub async fn start(kv: Store) -> Result<Self, RegistryError> {
        let map: Arc<RwLock<HashMap<String, Arc<SourceRegistration>>>> = Arc::default();
        let mut watch = kv
            .watch_all()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let weak = Arc::downgrade(&map);
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Some(map) = weak.upgrade() else { break };
                let Ok(entry) = entry else { continue };
                let mut m = map.write().unwrap_or_else(|p| p.into_inner());
                match entry.operation {
                    Operation::Put => {
                        match serde_json::from_slice::<SourceRegistration>(&entry.value) {
                            Ok(r) => {
                                m.insert(entry.key, Arc::new(r));
                            }
                            Err(e) => {
                                tracing::error!(key = %entry.key, error = %e, "corrupt producer registration ignored")
                            }
                        }
                    }
                    Operation::Delete | Operation::Purge => {
                        m.remove(&entry.key);
                    }
                }
            }
        });
        Ok(Self { kv, map })
    }

    /// The tenant's source whose CloudEvents `source` URI is `uri`.
    pub async fn find_by_uri(
        &self,
        tenant: &atp_core::TenantId,
        uri: &str,
    ) -> Result<Option<Arc<SourceRegistration>>, RegistryError> {
        let hit = |m: &HashMap<String, Arc<SourceRegistration>>| {
            m.values()
                .find(|r| r.tenant_id == *tenant && r.source_uri == uri)
                .cloned()
        };
        if let Some(r) = hit(&self.map.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(Some(r));
        }
        let fresh = list_tenant(&self.kv, tenant).await?;
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        for r in fresh {
            let p = PartitionKey::new(r.tenant_id.clone(), r.source_id.clone());
            m.insert(key(&p), Arc::new(r));
        }
        Ok(hit(&m))
    }

    pub async fn lookup(
        &self,
        p: &PartitionKey,
    ) -> Result<Option<Arc<SourceRegistration>>, RegistryError> {
        let k = key(p);
        if let Some(r) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return Ok(Some(r.clone()));
        }
        let fresh = get(&self.kv, p).await?.map(Arc::new);
        if let Some(r) = &fresh {
            self.map
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(k, r.clone());
        }
        Ok(fresh)
    }
}
