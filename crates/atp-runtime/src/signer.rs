//! Checkpoint signing keys: the port the integrity worker signs through, and its file-backed
//! adapter.
//!
//! The port ([`CheckpointSigner`]) is where a KMS or HSM plugs in: it names the active key,
//! lists every key ever used (public halves) and signs bytes with a named key. The file adapter
//! ([`FileKeyStore`]) keeps `keyring.json` (public entries) and one `<kid>.pem` per key (PKCS#8,
//! mode 0600) in a directory of its own; it generates the first key on first start and
//! [`FileKeyStore::rotate`] adds the next. Private keys never leave it.
//!
//! Every private key ATP writes or hands to a library (these, the dev stack's issuer and
//! producer keys, the gateway's attestation key, the JWT minter's) is encoded by
//! [`atp_core::keys::encode_private_key`] alone.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use atp_core::keys::PublishedKey;
use atp_core::keys::encode_private_key;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::{LineEnding, PemLabel as _};
use ed25519_dalek::pkcs8::{DecodePrivateKey, PrivateKeyInfoRef};
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("key store {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("no private key for {0} in the key store")]
    UnknownKey(String),
    #[error("key name {0:?} is not a valid note key name (no spaces or '+')")]
    BadName(String),
    #[error("encoding a private key as PKCS#8: {0}")]
    Encode(String),
}

/// The keys a signer holds: the one new checkpoints use, and every key ever used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    pub active: PublishedKey,
    pub all: Vec<PublishedKey>,
}

/// The signing-key port.
pub trait CheckpointSigner: Send + Sync + 'static {
    fn keyring(&self) -> impl Future<Output = Result<Keyring, KeyError>> + Send;
    /// A raw Ed25519 signature over `message` by key `kid`.
    fn sign(
        &self,
        kid: &str,
        message: &[u8],
    ) -> impl Future<Output = Result<[u8; 64], KeyError>> + Send;
}

/// A fresh Ed25519 key from the operating system's CSPRNG.
pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    SigningKey::from_bytes(&seed)
}

fn io(path: &Path, e: impl std::fmt::Display) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `bytes` to `path` readable by its owner only, replacing it atomically.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Writes a private key as PKCS#8 v1 PEM ([`encode_private_key`]), mode 0600.
pub fn write_private(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
    }
    let pem = encode_private_key(key)
        .map_err(|e| KeyError::Encode(e.to_string()))?
        .to_pem(PrivateKeyInfoRef::PEM_LABEL, LineEnding::LF)
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    write_secret_file(path, pem.as_bytes())
}

/// Reads a PKCS#8 PEM private key, v1 or v2.
pub fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Corrupt {
        path: path.display().to_string(),
        reason: format!("not an Ed25519 PKCS#8 PEM key: {e}"),
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyringFile {
    keys: Vec<PublishedKey>,
}

struct Loaded {
    modified: Option<SystemTime>,
    ring: Keyring,
    keys: HashMap<String, SigningKey>,
}

/// The file-backed key store.
pub struct FileKeyStore {
    dir: PathBuf,
    loaded: Mutex<Option<Arc<Loaded>>>,
}

impl std::fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileKeyStore {
    /// Opens the store in `dir`, generating its first key (named `name`) if it has none.
    pub fn open_or_init(dir: &Path, name: &str, now: DateTime<Utc>) -> Result<Self, KeyError> {
        let store = Self {
            dir: dir.to_owned(),
            loaded: Mutex::new(None),
        };
        if !store.ring_path().exists() {
            store.add_key(name, now)?;
        }
        store.load()?;
        Ok(store)
    }

    fn ring_path(&self) -> PathBuf {
        self.dir.join("keyring.json")
    }

    fn key_path(&self, kid: &str) -> PathBuf {
        self.dir.join(format!("{kid}.pem"))
    }

    fn read_ring(&self) -> Result<Vec<PublishedKey>, KeyError> {
        let path = self.ring_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<KeyringFile>(&bytes)
                .map(|f| f.keys)
                .map_err(|e| KeyError::Corrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Generates a key named `name`, closes the active key's window at `now` and makes the new
    /// key active. The private key is on disk before the keyring names it.
    fn add_key(&self, name: &str, now: DateTime<Utc>) -> Result<PublishedKey, KeyError> {
        let key = generate();
        let entry = PublishedKey::new(name, &key.verifying_key(), now)
            .map_err(|_| KeyError::BadName(name.to_owned()))?;
        write_private(&self.key_path(&entry.kid), &key)?;
        let mut ring = self.read_ring()?;
        for k in ring.iter_mut().filter(|k| k.is_active()) {
            k.not_after = Some(entry.not_before.clone());
        }
        ring.push(entry.clone());
        let bytes = serde_json::to_vec_pretty(&KeyringFile { keys: ring }).map_err(|e| {
            KeyError::Corrupt {
                path: self.ring_path().display().to_string(),
                reason: e.to_string(),
            }
        })?;
        write_secret_file(&self.ring_path(), &bytes)?;
        Ok(entry)
    }

    /// Rotation: a new active key (under `name`, which may differ from the old keys' name);
    /// every old key stays in the ring so its checkpoints still verify.
    pub fn rotate(&self, name: &str, now: DateTime<Utc>) -> Result<PublishedKey, KeyError> {
        let entry = self.add_key(name, now)?;
        self.load()?;
        Ok(entry)
    }

    /// The current keys, re-read when `keyring.json` changed (a rotation by another process).
    fn load(&self) -> Result<Arc<Loaded>, KeyError> {
        let path = self.ring_path();
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|e| io(&path, e))?;
        let mut slot = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.as_ref()
            && l.modified == Some(modified)
        {
            return Ok(l.clone());
        }
        let all = self.read_ring()?;
        let corrupt = |reason: String| KeyError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let active = all
            .iter()
            .rev()
            .find(|k| k.is_active())
            .cloned()
            .ok_or_else(|| corrupt("no active key".to_owned()))?;
        let mut keys = HashMap::new();
        for entry in &all {
            let p = self.key_path(&entry.kid);
            if !p.exists() {
                // A retired key's private half may be destroyed; only the active one must exist.
                continue;
            }
            let key = read_private(&p)?;
            let expected = PublishedKey::new(&entry.name, &key.verifying_key(), Utc::now())
                .map_err(|e| corrupt(e.to_string()))?;
            if expected.kid != entry.kid || expected.public_key != entry.public_key {
                return Err(corrupt(format!(
                    "{}.pem does not match its keyring entry",
                    entry.kid
                )));
            }
            keys.insert(entry.kid.clone(), key);
        }
        if !keys.contains_key(&active.kid) {
            return Err(KeyError::UnknownKey(active.kid));
        }
        let loaded = Arc::new(Loaded {
            modified: Some(modified),
            ring: Keyring { active, all },
            keys,
        });
        *slot = Some(loaded.clone());
        Ok(loaded)
    }
}

impl CheckpointSigner for FileKeyStore {
    async fn keyring(&self) -> Result<Keyring, KeyError> {
        Ok(self.load()?.ring.clone())
    }

    async fn sign(&self, kid: &str, message: &[u8]) -> Result<[u8; 64], KeyError> {
        let loaded = self.load()?;
        let key = loaded
            .keys
            .get(kid)
            .ok_or_else(|| KeyError::UnknownKey(kid.to_owned()))?;
        Ok(key.sign(message).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// RFC 8410 §10.3's example private key, byte for byte: PKCS#8 v1, as OpenSSL writes it.
    #[test]
    fn private_keys_are_written_as_rfc_8410_pkcs8_v1() {
        const RFC_8410: &str = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        let seed: [u8; 32] =
            hex::decode("d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842")
                .unwrap()
                .try_into()
                .unwrap();
        let key = SigningKey::from_bytes(&seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_private(&path, &key).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), RFC_8410);
        assert_eq!(read_private(&path).unwrap(), key);
    }

    #[tokio::test]
    async fn first_start_generates_a_private_key_only_its_owner_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::open_or_init(dir.path(), "atp.test", Utc::now()).unwrap();
        let ring = store.keyring().await.unwrap();
        assert_eq!(ring.all.len(), 1);
        let pem = dir.path().join(format!("{}.pem", ring.active.kid));
        let mode = std::fs::metadata(&pem).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Opening again finds the same key rather than making another.
        let again = FileKeyStore::open_or_init(dir.path(), "atp.test", Utc::now()).unwrap();
        assert_eq!(again.keyring().await.unwrap(), ring);
    }

    #[tokio::test]
    async fn rotation_adds_a_key_and_closes_the_old_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::open_or_init(dir.path(), "atp.test", Utc::now()).unwrap();
        let first = store.keyring().await.unwrap().active;
        let second = store.rotate("atp.test", Utc::now()).unwrap();
        let ring = store.keyring().await.unwrap();
        assert_eq!(ring.active, second);
        assert_eq!(ring.all.len(), 2);
        assert_eq!(ring.all[0].kid, first.kid);
        assert_eq!(ring.all[0].not_after.as_ref(), Some(&second.not_before));
        // Both keys still sign (old checkpoints can be re-signed by nobody but stay verifiable).
        let sig = store.sign(&first.kid, b"m").await.unwrap();
        let v = ring.all[0].verifier().unwrap();
        assert!(
            v.public_key()
                .verify_strict(b"m", &ed25519_dalek::Signature::from_bytes(&sig))
                .is_ok()
        );
        assert!(store.sign("00000000", b"m").await.is_err());
    }

    #[tokio::test]
    async fn a_key_file_that_does_not_match_its_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::open_or_init(dir.path(), "atp.test", Utc::now()).unwrap();
        let kid = store.keyring().await.unwrap().active.kid;
        write_private(&dir.path().join(format!("{kid}.pem")), &generate()).unwrap();
        let reopened = FileKeyStore::open_or_init(dir.path(), "atp.test", Utc::now());
        assert!(matches!(reopened, Err(KeyError::Corrupt { .. })));
    }
}
