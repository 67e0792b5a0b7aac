//! Tenants' privacy policies, kept in the `ATP_POLICIES` KV bucket beside the producer
//! registry: ingest decides on an event with NATS alone.
//!
//! Two kinds of key per tenant:
//! - `<tenant>.current`: the policy ingest applies now (absent: [`PolicyDocument::default`]);
//!   changed only by compare-and-set on its revision, so two changes never take one version.
//! - `<tenant>.v<N>`: version N, written once after it became current and never changed, so a
//!   record stamped with N can always be read under the policy that decided it.
//!
//! Ingest re-reads `current` at most every [`CURRENT_TTL`]: a change applies to events accepted
//! after that bound, and every record names the version it was accepted under.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use atp_core::TenantId;
use atp_core::policy::PolicyDocument;

use crate::streams::POLICIES_BUCKET;
use crate::subjects;

/// How long ingest keeps using the policy it read: the most a change takes to apply.
pub const CURRENT_TTL: Duration = Duration::from_secs(2);
/// Versions cached per process; versions never change, so the bound only limits memory.
const VERSIONS_CACHED: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    #[error("policy bucket unavailable: {0}")]
    Unavailable(String),
    #[error("policy entry {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the policy changed meanwhile (now version {0}); read it again and retry")]
    Conflict(u32),
    #[error("the policy change could not be announced: {0}")]
    Announce(String),
}

/// What `atp.policy.changed.<tenant>` carries: the version now current. The document itself
/// is read from the bucket ([`current`]), so a lost announcement costs only [`CURRENT_TTL`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyChanged {
    pub tenant_id: String,
    pub policy_version: u32,
}

fn current_key(tenant: &TenantId) -> String {
    format!("{tenant}.current")
}

fn version_key(tenant: &TenantId, version: u32) -> String {
    format!("{tenant}.v{version}")
}

fn unavailable(e: impl std::fmt::Display) -> PolicyStoreError {
    PolicyStoreError::Unavailable(e.to_string())
}

pub async fn bucket(js: &Context) -> Result<Store, PolicyStoreError> {
    js.get_key_value(POLICIES_BUCKET).await.map_err(unavailable)
}

fn decode(key: &str, bytes: &[u8]) -> Result<PolicyDocument, PolicyStoreError> {
    serde_json::from_slice(bytes).map_err(|e| PolicyStoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// The tenant's current policy and the KV revision it was read at (0: never set).
pub async fn current(
    kv: &Store,
    tenant: &TenantId,
) -> Result<(PolicyDocument, u64), PolicyStoreError> {
    let key = current_key(tenant);
    match kv.entry(&key).await.map_err(unavailable)? {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            Ok((decode(&key, &e.value)?, e.revision))
        }
        _ => Ok((PolicyDocument::default(), 0)),
    }
}

/// Version `version` of the tenant's policy (`None`: no such version).
pub async fn version(
    kv: &Store,
    tenant: &TenantId,
    version: u32,
) -> Result<Option<PolicyDocument>, PolicyStoreError> {
    if version == 1 {
        // Version 1 is the default unless the tenant's first change was recorded as 1 (never:
        // changes start at 2), so it needs no entry.
        return Ok(Some(PolicyDocument::default()));
    }
    let key = version_key(tenant, version);
    if let Some(bytes) = kv.get(&key).await.map_err(unavailable)? {
        return Ok(Some(decode(&key, &bytes)?));
    }
    // Written after `current`: a crash between the two leaves the newest version only there.
    let (doc, _) = current(kv, tenant).await?;
    Ok((doc.policy_version == version).then_some(doc))
}

/// Makes `doc` the tenant's policy as the next version, if the current one is still the one
/// read at `expected_revision`. Returns the stored document (with its `policyVersion`).
pub async fn replace(
    kv: &Store,
    tenant: &TenantId,
    mut doc: PolicyDocument,
) -> Result<PolicyDocument, PolicyStoreError> {
    let (now, revision) = current(kv, tenant).await?;
    // The version before may be only in `current` (a crash after the last change): record it.
    if now.policy_version > 1 {
        let key = version_key(tenant, now.policy_version);
        if kv.get(&key).await.map_err(unavailable)?.is_none() {
            put_json(kv, &key, &now).await?;
        }
    }
    doc.policy_version = now.policy_version + 1;
    let bytes = serde_json::to_vec(&doc).map_err(|e| PolicyStoreError::Corrupt {
        key: current_key(tenant),
        reason: e.to_string(),
    })?;
    let written = if revision == 0 {
        kv.create(current_key(tenant), bytes.into())
            .await
            .map_err(|e| e.to_string())
    } else {
        kv.update(current_key(tenant), bytes.into(), revision)
            .await
            .map_err(|e| e.to_string())
    };
    if written.is_err() {
        let (after, _) = current(kv, tenant).await?;
        if after.policy_version != now.policy_version {
            return Err(PolicyStoreError::Conflict(after.policy_version));
        }
        return Err(PolicyStoreError::Unavailable(
            written.err().unwrap_or_default(),
        ));
    }
    put_json(kv, &version_key(tenant, doc.policy_version), &doc).await?;
    Ok(doc)
}

/// Announces that `version` is now the tenant's policy, on core NATS (not stored): flushed, so
/// the server has it when this returns.
pub async fn announce(
    client: &async_nats::Client,
    tenant: &TenantId,
    version: u32,
) -> Result<(), PolicyStoreError> {
    let changed = PolicyChanged {
        tenant_id: tenant.to_string(),
        policy_version: version,
    };
    let body =
        serde_json::to_vec(&changed).map_err(|e| PolicyStoreError::Announce(e.to_string()))?;
    client
        .publish(subjects::policy_changed(tenant), body.into())
        .await
        .map_err(|e| PolicyStoreError::Announce(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| PolicyStoreError::Announce(e.to_string()))
}

async fn put_json(kv: &Store, key: &str, doc: &PolicyDocument) -> Result<(), PolicyStoreError> {
    let bytes = serde_json::to_vec(doc).map_err(|e| PolicyStoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    kv.put(key, bytes.into()).await.map_err(unavailable)?;
    Ok(())
}

/// Each tenant's current policy and when it was read.
type Currents = HashMap<TenantId, (Instant, Arc<PolicyDocument>)>;
/// Policy versions by tenant and number.
type Versions = HashMap<(TenantId, u32), Arc<PolicyDocument>>;

/// What ingest and the read side hold: current policies (re-read after [`CURRENT_TTL`]) and
/// versions (cached, since they never change).
#[derive(Clone)]
pub struct PolicyCache {
    kv: Store,
    current: Arc<Mutex<Currents>>,
    versions: Arc<Mutex<Versions>>,
}

impl PolicyCache {
    pub fn new(kv: Store) -> Self {
        Self {
            kv,
            current: Arc::default(),
            versions: Arc::default(),
        }
    }

    /// The bucket itself, for reads that must not be cached and for changes.
    pub fn store(&self) -> &Store {
        &self.kv
    }

    /// The policy to apply to an event accepted now.
    pub async fn current(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<PolicyDocument>, PolicyStoreError> {
        if let Some((at, doc)) = self.lock_current().get(tenant)
            && at.elapsed() < CURRENT_TTL
        {
            return Ok(doc.clone());
        }
        let (doc, _) = current(&self.kv, tenant).await?;
        let doc = Arc::new(doc);
        self.lock_current()
            .insert(tenant.clone(), (Instant::now(), doc.clone()));
        Ok(doc)
    }

    /// The policy a record stamped with `version` was accepted under.
    pub async fn version(
        &self,
        tenant: &TenantId,
        version: u32,
    ) -> Result<Option<Arc<PolicyDocument>>, PolicyStoreError> {
        let key = (tenant.clone(), version);
        if let Some(doc) = self.lock_versions().get(&key) {
            return Ok(Some(doc.clone()));
        }
        let Some(doc) = self::version(&self.kv, tenant, version).await? else {
            return Ok(None);
        };
        let doc = Arc::new(doc);
        let mut versions = self.lock_versions();
        if versions.len() >= VERSIONS_CACHED {
            versions.clear();
        }
        versions.insert(key, doc.clone());
        Ok(Some(doc))
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Currents> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_versions(&self) -> std::sync::MutexGuard<'_, Versions> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }
}
