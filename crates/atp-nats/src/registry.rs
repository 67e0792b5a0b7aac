//! The producer registry, kept in the `ATP_PRODUCERS` KV bucket (key `<tenant>.<source>`).
//!
//! The ingest worker needs only NATS to decide on an event, so the registry lives beside the
//! streams rather than in PostgreSQL. Workers hold a cache fed by a KV watch (so a revocation
//! takes effect within milliseconds) and fall back to a direct read on a miss (so a source
//! registered a moment ago is never refused as unknown).
//!
//! The watch is supervised: a watch that fails or ends is opened again with backoff (logged at
//! WARN), and every [`RELOAD_EVERY`] the whole registry is read afresh, so an update the watch
//! missed (a server restart, a consumer lost, a race with a read on a miss) is repaired. A
//! revocation therefore applies within milliseconds while NATS is healthy, and within
//! [`REVOCATION_BOUND`] whatever happened to the watch, once NATS answers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

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

/// How often the whole registry is read again, whatever the watch says. A minute: the
/// registry is small (one entry per source), so a full read costs little, and an operator
/// revoking a key can be told "within a minute" even if the watch silently missed it.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// The first wait before a failed watch is opened again; doubled on each failure in a row.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a restarted nats-server is back within seconds, and
/// waiting longer would only delay revocations once it is.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the replay of the whole registry at the start of a watch may take before the
/// watch counts as failed (a few hundred entries replay in milliseconds).
const SNAPSHOT_WITHIN: Duration = Duration::from_secs(10);
/// The most a revocation (any registry update) can take to reach a cache, once NATS answers:
/// the next full reload, plus one retry wait and one replay if that reload has to be retried.
pub const REVOCATION_BOUND: Duration = Duration::from_secs(60 + 5 + 10);

type Entries = HashMap<String, Arc<SourceRegistration>>;

/// A watched, in-memory view of the registry.
#[derive(Clone)]
pub struct RegistryCache {
    kv: Store,
    map: Arc<RwLock<Entries>>,
}

/// How one watch ended without failing.
enum Followed {
    /// Time for the periodic full reload.
    Reload,
    /// Every handle on the cache is gone.
    Dropped,
}

/// Applies one watched entry to `m`.
fn apply(m: &mut Entries, entry: async_nats::jetstream::kv::Entry) {
    match entry.operation {
        Operation::Put => match serde_json::from_slice::<SourceRegistration>(&entry.value) {
            Ok(r) => {
                m.insert(entry.key, Arc::new(r));
            }
            Err(e) => {
                tracing::error!(key = %entry.key, error = %e, "corrupt producer registration ignored");
                m.remove(&entry.key);
            }
        },
        Operation::Delete | Operation::Purge => {
            m.remove(&entry.key);
        }
    }
}

/// Keeps `map` equal to the registry for as long as a cache holds it: one watch after another,
/// each starting with a full replay, with backoff between failures.
async fn supervise(kv: Store, map: Weak<RwLock<Entries>>) {
    let mut retry = RETRY_FIRST;
    while map.strong_count() > 0 {
        match follow(&kv, &map).await {
            Ok(Followed::Reload) => retry = RETRY_FIRST,
            Ok(Followed::Dropped) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = retry.as_millis() as u64,
                    "the producer registry watch failed; opening it again");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One watch: the whole registry, replayed into a fresh map that then replaces the cache's
/// (so entries deleted while no watch ran disappear too), then every update as it comes, until
/// it is time to reload or the watch fails.
async fn follow(kv: &Store, map: &Weak<RwLock<Entries>>) -> Result<Followed, String> {
    // The replay ends with the entry that has nothing pending after it; an empty bucket
    // replays nothing, so it is current at once. A write racing this check arrives on the
    // watch below and is applied as an update.
    let empty = kv.status().await.map_err(|e| e.to_string())?.values() == 0;
    // `watch_all` would deliver only new updates; with history it first replays the newest
    // value of every key (delete markers included).
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let started = tokio::time::Instant::now();
    let mut fresh = Entries::new();
    let mut current = false;
    let swap = |fresh: &mut Entries| -> bool {
        let Some(map) = map.upgrade() else {
            return false;
        };
        *map.write().unwrap_or_else(|p| p.into_inner()) = std::mem::take(fresh);
        true
    };
    if empty {
        if !swap(&mut fresh) {
            return Ok(Followed::Dropped);
        }
        current = true;
    }
    loop {
        let until = if current {
            started + RELOAD_EVERY
        } else {
            started + SNAPSHOT_WITHIN
        };
        let entry = match tokio::time::timeout_at(until, watch.next()).await {
            Err(_) if current => return Ok(Followed::Reload),
            Err(_) => {
                return Err(format!(
                    "the registry did not replay within {SNAPSHOT_WITHIN:?}"
                ));
            }
            Ok(None) => return Err("the watch ended".to_owned()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(entry))) => entry,
        };
        if current {
            let Some(map) = map.upgrade() else {
                return Ok(Followed::Dropped);
            };
            apply(&mut map.write().unwrap_or_else(|p| p.into_inner()), entry);
        } else {
            let last = entry.delta == 0;
            apply(&mut fresh, entry);
            if last {
                if !swap(&mut fresh) {
                    return Ok(Followed::Dropped);
                }
                current = true;
            }
        }
    }
}

impl RegistryCache {
    /// Starts the supervised watch; entries arrive in the background (lookups that miss read
    /// the KV meanwhile). It never gives up: failures are retried with backoff, logged at WARN.
    pub async fn start(kv: Store) -> Result<Self, RegistryError> {
        let map: Arc<RwLock<Entries>> = Arc::default();
        tokio::spawn(supervise(kv.clone(), Arc::downgrade(&map)));
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
        // Only where the watch has nothing yet: what it has may be newer than this read.
        for r in fresh {
            let p = PartitionKey::new(r.tenant_id.clone(), r.source_id.clone());
            m.entry(key(&p)).or_insert_with(|| Arc::new(r));
        }
        Ok(hit(&m))
    }

    /// What the cache holds for `p` now, without reading the KV on a miss: how tests see
    /// what the watch delivered.
    pub fn cached(&self, p: &PartitionKey) -> Option<Arc<SourceRegistration>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key(p))
            .cloned()
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
        // Only if the watch has not filled it meanwhile: its value may be newer than this read.
        if let Some(r) = &fresh {
            return Ok(Some(
                self.map
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(k)
                    .or_insert_with(|| r.clone())
                    .clone(),
            ));
        }
        Ok(fresh)
    }
}
