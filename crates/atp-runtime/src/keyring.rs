//! Data-subject keys (ADR 0019): the key-management port that holds each tenant's key, its
//! file adapter, and [`SubjectKeys`], which creates, unwraps and caches subject bucket keys.
//!
//! The tenant key never leaves its adapter: callers hand it bytes to wrap or unwrap. A cloud
//! KMS or Vault is another [`TenantKeys`]; the file adapter is for one host and development.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use atp_core::TenantId;
use atp_core::privacy::BucketKey;
use atp_nats::subject_keys::{self, KeyName, SubjectKeysError, WrappedKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use futures::future::BoxFuture;
use hmac::Mac;
use sha2::Sha256;

/// How long an unwrapped key stays cached: the most a destroyed key (erasure, retention) can
/// still be used by a process that held it (ADR 0019).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(60);
/// Unwrapped keys cached per process.
pub const KEY_CACHE_ENTRIES: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("tenant key for {tenant}: {reason}")]
    TenantKey { tenant: String, reason: String },
    #[error("{0}")]
    Store(#[from] SubjectKeysError),
    #[error("subject key {kid} does not unwrap with the tenant key")]
    Unwrap { kid: String },
}

/// The key-management port: each tenant's key wraps subject keys and keys pseudonyms.
pub trait TenantKeys: Send + Sync + std::fmt::Debug {
    /// Seals a 32-byte subject key; `create` allows making the tenant's key on first use
    /// (only ingest, which seals, may: a reader that made one would silently hold another).
    fn wrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        aad: &'a [u8],
        key: &'a [u8; 32],
        create: bool,
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyringError>>;

    fn unwrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        aad: &'a [u8],
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyringError>>;

    /// A keyed hash of a subject id: the same id gives the same pseudonym for a tenant, and
    /// nobody without the tenant key can tell which id it is.
    fn pseudonym<'a>(
        &'a self,
        tenant: &'a TenantId,
        subject: &'a str,
        create: bool,
    ) -> BoxFuture<'a, Result<String, KeyringError>>;
}

/// Tenant keys in files (`<dir>/<tenant>.key`, 32 random bytes in base64, mode 0600 in a
/// 0700 directory), created on first use. Never commit the directory; back it up with the
/// ledger (losing it makes every sealed value unreadable).
pub struct FileTenantKeys {
    dir: PathBuf,
    loaded: Mutex<HashMap<TenantId, Arc<[u8; 32]>>>,
}

impl std::fmt::Debug for FileTenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTenantKeys")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileTenantKeys {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            loaded: Mutex::default(),
        }
    }

    fn key(&self, tenant: &TenantId, create: bool) -> Result<Arc<[u8; 32]>, KeyringError> {
        if let Some(k) = self.lock().get(tenant) {
            return Ok(k.clone());
        }
        let fail = |reason: String| KeyringError::TenantKey {
            tenant: tenant.to_string(),
            reason,
        };
        let path = self.dir.join(format!("{tenant}.key"));
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => {
                decode_key(&text).ok_or_else(|| fail(format!("{} is corrupt", path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                self.create(&path).map_err(|e| fail(e.to_string()))?
            }
            Err(e) => return Err(fail(format!("{}: {e}", path.display()))),
        };
        let key = Arc::new(key);
        self.lock().insert(tenant.clone(), key.clone());
        Ok(key)
    }

    /// Writes a fresh key unless another process wrote one first (a hard link never replaces
    /// an existing file), and returns whichever key is there.
    fn create(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let mut nonce = [0u8; 8];
        rand::fill(&mut nonce);
        let tmp = self.dir.join(format!(".{}.tmp", hex::encode(nonce)));
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(STANDARD.encode(key).as_bytes())?;
            f.sync_all()?;
        }
        let linked = std::fs::hard_link(&tmp, path);
        std::fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                decode_key(&std::fs::read_to_string(path)?).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt key file")
                })
            }
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Arc<[u8; 32]>>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

impl TenantKeys for FileTenantKeys {
    fn wrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        aad: &'a [u8],
        key: &'a [u8; 32],
        create: bool,
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyringError>> {
        Box::pin(async move {
            let kek = self.key(tenant, create)?;
            let mut nonce = [0u8; 24];
            rand::fill(&mut nonce);
            let ct = XChaCha20Poly1305::new(&(*kek).into())
                .encrypt(&nonce.into(), Payload { msg: key, aad })
                .map_err(|_| KeyringError::TenantKey {
                    tenant: tenant.to_string(),
                    reason: "wrapping failed".to_owned(),
                })?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&ct);
            Ok(out)
        })
    }

    fn unwrap<'a>(
        &'a self,
        tenant: &'a TenantId,
        aad: &'a [u8],
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyringError>> {
        Box::pin(async move {
            let kek = self.key(tenant, false)?;
            let bad = || KeyringError::TenantKey {
                tenant: tenant.to_string(),
                reason: "a wrapped key does not open".to_owned(),
            };
            if wrapped.len() < 24 {
                return Err(bad());
            }
            let (nonce, ct) = wrapped.split_at(24);
            let nonce: [u8; 24] = nonce.try_into().map_err(|_| bad())?;
            let clear = XChaCha20Poly1305::new(&(*kek).into())
                .decrypt(&nonce.into(), Payload { msg: ct, aad })
                .map_err(|_| bad())?;
            clear.try_into().map_err(|_| bad())
        })
    }

    fn pseudonym<'a>(
        &'a self,
        tenant: &'a TenantId,
        subject: &'a str,
        create: bool,
    ) -> BoxFuture<'a, Result<String, KeyringError>> {
        Box::pin(async move {
            let kek = self.key(tenant, create)?;
            // A key of its own for pseudonyms, derived so the tenant key is never an HMAC key.
            let hk = hkdf::Hkdf::<Sha256>::new(None, &kek[..]);
            let mut mac_key = [0u8; 32];
            hk.expand(b"atp/subject-pseudonym/v1", &mut mac_key)
                .map_err(|_| KeyringError::TenantKey {
                    tenant: tenant.to_string(),
                    reason: "deriving the pseudonym key failed".to_owned(),
                })?;
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&mac_key).map_err(|_| {
                KeyringError::TenantKey {
                    tenant: tenant.to_string(),
                    reason: "pseudonym key".to_owned(),
                }
            })?;
            mac.update(subject.as_bytes());
            // 128 bits: collisions between a tenant's subjects are out of reach.
            Ok(hex::encode(&mac.finalize().into_bytes()[..16]))
        })
    }
}

/// The associated data of a wrapped subject key: it opens only as that key of that tenant.
fn wrap_aad(tenant: &TenantId, kid: &str, key: &WrappedKey) -> Vec<u8> {
    let mut out = b"atp/subject-key/v1".to_vec();
    for part in [tenant.as_str(), kid, &key.retention_policy_id, &key.bucket] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

type CachedKey = (Instant, BucketKey);
/// A subject's pseudonym and when it was computed.
type CachedPseudonym = (Instant, String);

/// Subject bucket keys: found or created for sealing, found by id for opening, cached for
/// [`KEY_CACHE_TTL`] at most.
#[derive(Clone)]
pub struct SubjectKeys {
    kv: Store,
    port: Arc<dyn TenantKeys>,
    by_kid: Arc<Mutex<HashMap<(TenantId, String), CachedKey>>>,
    by_name: Arc<Mutex<HashMap<KeyName, (Instant, String)>>>,
    /// Pseudonyms never change for a tenant key: cached so that sealing an event costs no
    /// HMAC once its subject has been seen. The key is the subject's id, personal data: kept
    /// no longer than a key ([`KEY_CACHE_TTL`]), like everything else an erasure must outlive.
    pseudonyms: Arc<Mutex<HashMap<(TenantId, String), CachedPseudonym>>>,
}

impl SubjectKeys {
    pub fn new(kv: Store, port: Arc<dyn TenantKeys>) -> Self {
        Self {
            kv,
            port,
            by_kid: Arc::default(),
            by_name: Arc::default(),
            pseudonyms: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.kv
    }

    /// The same key store and tenant keys with caches of its own, empty: for a job that must
    /// not use a key destroyed before it started (an export's disclosures), whatever this
    /// process read earlier.
    pub fn fresh(&self) -> SubjectKeys {
        SubjectKeys::new(self.kv.clone(), self.port.clone())
    }

    pub async fn pseudonym(
        &self,
        tenant: &TenantId,
        subject: &str,
        create: bool,
    ) -> Result<String, KeyringError> {
        let slot = (tenant.clone(), subject.to_owned());
        if let Some((at, p)) = lock(&self.pseudonyms).get(&slot)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(p.clone());
        }
        let p = self.port.pseudonym(tenant, subject, create).await?;
        bounded_insert(&self.pseudonyms, slot, (Instant::now(), p.clone()));
        Ok(p)
    }

    /// The key that seals `subject`'s values under `retention_policy_id` in time bucket
    /// `bucket` (`atp_core::policy::bucket_of`), created on first use.
    pub async fn for_sealing(
        &self,
        tenant: &TenantId,
        subject: &str,
        retention_policy_id: &str,
        bucket: &str,
    ) -> Result<BucketKey, KeyringError> {
        let name = KeyName {
            tenant: tenant.clone(),
            pseudonym: self.pseudonym(tenant, subject, true).await?,
            retention_policy_id: retention_policy_id.to_owned(),
            bucket: bucket.to_owned(),
        };
        let cached = lock(&self.by_name)
            .get(&name)
            .filter(|(at, _)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(_, kid)| kid.clone());
        let kid = match cached {
            Some(kid) => kid,
            None => match subject_keys::kid_of(&self.kv, &name).await? {
                Some(kid) => kid,
                None => self.create(&name).await?,
            },
        };
        let Some(key) = self.by_kid(tenant, &kid).await? else {
            // The name points at a key destroyed meanwhile (an erasure racing this event):
            // the name goes next, and the next event makes a new key.
            return Err(KeyringError::Unwrap { kid });
        };
        bounded_insert(&self.by_name, name, (Instant::now(), kid));
        Ok(key)
    }

    async fn create(&self, name: &KeyName) -> Result<String, KeyringError> {
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let kid = atp_core::privacy::key_id(&name.retention_policy_id, &name.bucket, id);
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let mut entry = WrappedKey {
            wrapped: String::new(),
            retention_policy_id: name.retention_policy_id.clone(),
            bucket: name.bucket.clone(),
            pseudonym: name.pseudonym.clone(),
            created_at: atp_core::record::timestamp(chrono::Utc::now()),
        };
        let aad = wrap_aad(&name.tenant, &kid, &entry);
        entry.wrapped = STANDARD.encode(self.port.wrap(&name.tenant, &aad, &key, true).await?);
        let winner = subject_keys::create(&self.kv, name, &kid, &entry).await?;
        if winner == kid {
            bounded_insert(
                &self.by_kid,
                (name.tenant.clone(), kid.clone()),
                (Instant::now(), BucketKey::new(kid.clone(), &key)),
            );
        }
        Ok(winner)
    }

    /// Key `kid` of `tenant`, or `None` when it is destroyed (erased or expired).
    pub async fn by_kid(
        &self,
        tenant: &TenantId,
        kid: &str,
    ) -> Result<Option<BucketKey>, KeyringError> {
        let slot = (tenant.clone(), kid.to_owned());
        if let Some((at, key)) = lock(&self.by_kid).get(&slot)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(Some(key.clone()));
        }
        let Some(entry) = subject_keys::wrapped(&self.kv, tenant, kid).await? else {
            lock(&self.by_kid).remove(&slot);
            return Ok(None);
        };
        let wrapped = STANDARD
            .decode(&entry.wrapped)
            .map_err(|_| KeyringError::Unwrap {
                kid: kid.to_owned(),
            })?;
        let aad = wrap_aad(tenant, kid, &entry);
        let key = self.port.unwrap(tenant, &aad, &wrapped).await?;
        let key = BucketKey::new(kid, &key);
        bounded_insert(&self.by_kid, slot, (Instant::now(), key.clone()));
        Ok(Some(key))
    }

    /// Forgets every cached key: after this process destroyed keys itself.
    pub fn forget(&self) {
        lock(&self.by_kid).clear();
        lock(&self.by_name).clear();
        lock(&self.pseudonyms).clear();
    }
}

fn lock<K, V>(m: &Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Inserts, first dropping every entry when the map is full: keys are re-read on the next
/// use, so the bound costs a burst of KV reads, never a wrong answer.
fn bounded_insert<K: std::hash::Hash + Eq, V>(m: &Mutex<HashMap<K, V>>, k: K, v: V) {
    let mut m = lock(m);
    if m.len() >= KEY_CACHE_ENTRIES {
        m.clear();
    }
    m.insert(k, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_adapter_wraps_and_keys_pseudonyms_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let keys = FileTenantKeys::new(&dir.path().join("tenant-keys"));
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        // Readers never create a tenant key.
        assert!(keys.unwrap(&acme, b"ad", &[0u8; 60]).await.is_err());
        let wrapped = keys.wrap(&acme, b"ad", &[9u8; 32], true).await.unwrap();
        assert_eq!(
            keys.unwrap(&acme, b"ad", &wrapped).await.unwrap(),
            [9u8; 32]
        );
        assert!(keys.unwrap(&acme, b"other ad", &wrapped).await.is_err());
        let p1 = keys.pseudonym(&acme, "u-1", true).await.unwrap();
        assert_eq!(p1, keys.pseudonym(&acme, "u-1", false).await.unwrap());
        assert_ne!(p1, keys.pseudonym(&acme, "u-2", false).await.unwrap());
        assert_ne!(p1, keys.pseudonym(&other, "u-1", true).await.unwrap());
        assert_eq!(p1.len(), 32);
        // 0600, and a second adapter on the same directory reads the same key.
        let mode = std::fs::metadata(dir.path().join("tenant-keys/acme.key"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let again = FileTenantKeys::new(&dir.path().join("tenant-keys"));
        assert_eq!(
            again.unwrap(&acme, b"ad", &wrapped).await.unwrap(),
            [9u8; 32]
        );
    }
}
