//! Values sealed before hashing (CONTRACT §8, ADR 0019), and the views readers get of them.
//!
//! A `personal` or `sensitive` value in `data` is replaced, before the record is canonicalised,
//! by a [`SealedValue`]: XChaCha20-Poly1305 under a *field key* derived from the data subject's
//! bucket key for this record and path. The record's digest, chain link and Merkle leaf cover
//! the sealed form, so no proof ever depends on a key; destroying the bucket key erases the
//! value everywhere the ledger is copied (crypto-shredding).
//!
//! A field key opens exactly one value: it is what an export discloses so an outsider can
//! check a clear value against the hashed record ([`open`] with the disclosed key).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::canonical;
use crate::policy::{self, Classification};

/// The `enc` of every sealed value ATP writes.
pub const ALGORITHM: &str = "xchacha20poly1305";
const FIELD_KEY_INFO: &[u8] = b"atp/field/v1";
const AAD_LABEL: &[u8] = b"atp/value/v1";

/// A value as stored in a record: what was sealed, by which key, and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedValue {
    pub enc: String,
    /// The classification the value was sealed under.
    pub cls: Classification,
    /// The id of the subject bucket key the field key was derived from.
    pub kid: String,
    /// The 24-byte nonce, base64.
    pub n: String,
    /// Ciphertext with its 16-byte tag, base64.
    pub ct: String,
}

/// A key that opens one value: HKDF-SHA-256 of the bucket key for one record and path.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldKey(pub [u8; 32]);

impl std::fmt::Debug for FieldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FieldKey(..)")
    }
}

impl FieldKey {
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Option<FieldKey> {
        let bytes = STANDARD.decode(s).ok()?;
        Some(FieldKey(bytes.try_into().ok()?))
    }
}

/// A subject key's id: `<retention policy>.<bucket>.<32 hex>` (ADR 0019), so that what expires
/// can be told from the id alone. The random part makes it unguessable and unlinkable to the
/// subject.
pub fn key_id(retention_policy_id: &str, bucket: &str, random: [u8; 16]) -> String {
    format!("{retention_policy_id}.{bucket}.{}", hex::encode(random))
}

/// The retention policy and bucket a [`key_id`] names (`None`: not an id ATP made).
pub fn kid_parts(kid: &str) -> Option<(&str, &str)> {
    let mut parts = kid.split('.');
    let (policy, bucket, random) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && random.len() == 32).then_some((policy, bucket))
}

/// A subject bucket key (32 random bytes), unwrapped. It never leaves the process that holds
/// it; only field keys derived from it are disclosed.
#[derive(Clone)]
pub struct BucketKey {
    pub kid: String,
    /// HKDF-Extract of the key, done once: each field key is then one HKDF-Expand.
    hkdf: hkdf::Hkdf<Sha256>,
}

impl BucketKey {
    pub fn new(kid: impl Into<String>, key: &[u8; 32]) -> BucketKey {
        BucketKey {
            kid: kid.into(),
            hkdf: hkdf::Hkdf::<Sha256>::new(None, key),
        }
    }
}

impl std::fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketKey({})", self.kid)
    }
}

/// Where a value sits: what its associated data binds it to.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub tenant: &'a str,
    pub source: &'a str,
    pub record_id: &'a str,
    /// JSON Pointer into the event's `data`.
    pub path: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    #[error("sealed value at {0} uses {1:?}, not {ALGORITHM}")]
    Algorithm(String, String),
    #[error("sealed value at {0} is malformed")]
    Malformed(String),
    #[error("the key does not open the value at {0}")]
    Opening(String),
    #[error("value at {0} cannot be sealed: {1}")]
    Sealing(String, String),
}

/// The field key of the value at `place.path` of record `place.record_id`.
pub fn field_key(bucket: &BucketKey, place: &Place<'_>) -> FieldKey {
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA-256's limit of 255 blocks, so expand cannot fail; the
    // fallback (all zeros) is unreachable but keeps this function total.
    let parts: [&[u8]; 5] = [
        FIELD_KEY_INFO,
        &(place.record_id.len() as u64).to_be_bytes(),
        place.record_id.as_bytes(),
        &(place.path.len() as u64).to_be_bytes(),
        place.path.as_bytes(),
    ];
    if bucket.hkdf.expand_multi_info(&parts, &mut okm).is_err() {
        okm = [0u8; 32];
    }
    FieldKey(okm)
}

/// The associated data of a sealed value: every member of its place, its classification and
/// its key id, each length-prefixed (u64 big-endian), after the label `atp/value/v1`.
pub fn associated_data(place: &Place<'_>, cls: Classification, kid: &str) -> Vec<u8> {
    let mut out = AAD_LABEL.to_vec();
    for part in [
        place.tenant,
        place.source,
        place.record_id,
        place.path,
        cls.as_str(),
        kid,
    ] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Seals `value` (its canonical JSON bytes) under `key` with `nonce`. The caller draws the
/// nonce at random: each field key seals one value once, so even a repeated nonce could not
/// pair two plaintexts under one key.
pub fn seal(
    key: &FieldKey,
    place: &Place<'_>,
    cls: Classification,
    kid: &str,
    value: &Value,
    nonce: [u8; 24],
) -> Result<SealedValue, PrivacyError> {
    let clear = canonical::to_canonical(value)
        .map_err(|e| PrivacyError::Sealing(place.path.to_owned(), e.to_string()))?;
    let cipher = XChaCha20Poly1305::new(&key.0.into());
    let n: XNonce = nonce.into();
    let aad = associated_data(place, cls, kid);
    let ct = cipher
        .encrypt(
            &n,
            Payload {
                msg: &clear,
                aad: &aad,
            },
        )
        .map_err(|_| PrivacyError::Sealing(place.path.to_owned(), "AEAD failed".to_owned()))?;
    Ok(SealedValue {
        enc: ALGORITHM.to_owned(),
        cls,
        kid: kid.to_owned(),
        n: STANDARD.encode(nonce),
        ct: STANDARD.encode(ct),
    })
}

/// Opens a sealed value with its field key: the clear value, or an error if the key, the
/// place or any byte of the sealed value is not what was sealed.
pub fn open(
    key: &FieldKey,
    place: &Place<'_>,
    sealed: &SealedValue,
) -> Result<Value, PrivacyError> {
    let at = || place.path.to_owned();
    if sealed.enc != ALGORITHM {
        return Err(PrivacyError::Algorithm(at(), sealed.enc.clone()));
    }
    let nonce: [u8; 24] = STANDARD
        .decode(&sealed.n)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PrivacyError::Malformed(at()))?;
    let ct = STANDARD
        .decode(&sealed.ct)
        .map_err(|_| PrivacyError::Malformed(at()))?;
    let cipher = XChaCha20Poly1305::new(&key.0.into());
    let aad = associated_data(place, sealed.cls, &sealed.kid);
    let clear = cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &ct,
                aad: &aad,
            },
        )
        .map_err(|_| PrivacyError::Opening(at()))?;
    canonical::parse_strict(&clear).map_err(|_| PrivacyError::Malformed(at()))
}

/// The value at a leaf as a sealed value, if it is one. `data`'s schema has no object at a
/// leaf position, so an object with exactly these members is unambiguous.
pub fn as_sealed(v: &Value) -> Option<SealedValue> {
    match v {
        Value::Object(m) if m.contains_key("enc") && m.contains_key("ct") => {
            serde_json::from_value(v.clone()).ok()
        }
        _ => None,
    }
}

/// Every sealed value in `data`, with its JSON Pointer.
pub fn sealed_values(data: &Value) -> Vec<(String, SealedValue)> {
    let mut out = Vec::new();
    walk(data, &mut Vec::new(), &mut |segments, v| {
        if let Some(s) = as_sealed(v) {
            out.push((policy::pointer(segments), s));
            true
        } else {
            false
        }
    });
    out
}

/// Calls `f` with the path and value of every value of `data` top-down; a `true` answer stops
/// the descent there.
pub fn walk(value: &Value, at: &mut Vec<String>, f: &mut impl FnMut(&[String], &Value) -> bool) {
    if f(at, value) {
        return;
    }
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                at.push(k.clone());
                walk(v, at, f);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(i.to_string());
                walk(v, at, f);
                at.pop();
            }
        }
        _ => {}
    }
}

/// What ingest seals in one event: the policy's decision, the subject's bucket key for each
/// retention policy among the values to seal, and a fresh random nonce per value (the shell
/// draws them: the core reads no randomness).
#[derive(Debug, Clone)]
pub struct Sealing {
    pub classified: crate::policy::Classified,
    pub keys: std::collections::BTreeMap<String, BucketKey>,
    /// One per value of [`crate::policy::Classified::encrypted`], in its order.
    pub nonces: Vec<[u8; 24]>,
}

/// The event's `data` as JSON: `data` itself, or `data_base64` decoded (binary mode).
pub fn data_of(event: &Map<String, Value>) -> Option<Value> {
    match (event.get("data"), event.get("data_base64")) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(Value::String(b64))) => {
            serde_json::from_slice(&STANDARD.decode(b64).ok()?).ok()
        }
        _ => None,
    }
}

/// Replaces every value the policy classifies `personal` or `sensitive` by its sealed form.
/// A binary-mode event's data is stored as `data` once sealed (sealed values are JSON).
pub fn seal_event(
    event: &mut Map<String, Value>,
    tenant: &str,
    source: &str,
    record_id: &str,
    sealing: &Sealing,
) -> Result<(), PrivacyError> {
    let Some(mut data) = data_of(event) else {
        return Err(PrivacyError::Sealing(
            String::new(),
            "the event has no JSON data".to_owned(),
        ));
    };
    for (i, field) in sealing.classified.encrypted().enumerate() {
        let fail = |why: &str| PrivacyError::Sealing(field.path.clone(), why.to_owned());
        let bucket = sealing
            .keys
            .get(&field.retention_policy_id)
            .ok_or_else(|| fail("no subject key for its retention policy"))?;
        let nonce = *sealing.nonces.get(i).ok_or_else(|| fail("no nonce"))?;
        let place = Place {
            tenant,
            source,
            record_id,
            path: &field.path,
        };
        let clear = data
            .pointer(&field.path)
            .ok_or_else(|| fail("not in data"))?;
        let key = field_key(bucket, &place);
        let sealed = seal(
            &key,
            &place,
            field.classification,
            &bucket.kid,
            clear,
            nonce,
        )?;
        let sealed = serde_json::to_value(sealed).map_err(|e| fail(&e.to_string()))?;
        replace(&mut data, &field.path, sealed);
    }
    event.remove("data_base64");
    event.insert("data".to_owned(), data);
    Ok(())
}

/// What a reader is shown in place of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    Clear,
    Redacted(Classification),
    Erased,
}

/// `{"redacted": "<classification>"}`: a value the caller may not read.
pub fn redacted(cls: Classification) -> Value {
    Value::Object(Map::from_iter([(
        "redacted".to_owned(),
        Value::String(cls.as_str().to_owned()),
    )]))
}

/// `{"erased": true}`: a value whose key is destroyed (erasure or retention).
pub fn erased() -> Value {
    Value::Object(Map::from_iter([("erased".to_owned(), Value::Bool(true))]))
}

/// Replaces the value at `pointer` in `data` (no-op if it is not there).
pub fn replace(data: &mut Value, pointer: &str, with: Value) {
    if let Some(slot) = data.pointer_mut(pointer) {
        *slot = with;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bucket() -> BucketKey {
        BucketKey::new("k-1", &[7u8; 32])
    }

    fn place(path: &str) -> Place<'_> {
        Place {
            tenant: "acme",
            source: "crm",
            record_id: "01JD000000000000000000000A",
            path,
        }
    }

    #[test]
    fn poly1305_runs_on_its_audited_portable_backend() {
        // .cargo/config.toml sets this flag for the poly1305 crate; RUSTFLAGS in the
        // environment replaces it silently. Its AVX2 backend costs ~8x as much per sealed value.
        let backend = if cfg!(poly1305_backend = "soft") {
            "soft"
        } else {
            "chosen at run time"
        };
        assert_eq!(
            backend, "soft",
            "built without .cargo/config.toml's rustflags (is RUSTFLAGS set?)"
        );
    }

    #[test]
    fn a_sealed_value_opens_with_its_field_key_and_nothing_else() {
        let p = place("/attributes/email");
        let key = field_key(&bucket(), &p);
        let v = json!("ada@example.com");
        let s = seal(&key, &p, Classification::Personal, "k-1", &v, [1u8; 24]).unwrap();
        assert!(!s.ct.contains("ada"));
        assert_eq!(open(&key, &p, &s).unwrap(), v);
        // Another path, record, tenant or key: no.
        let other = place("/attributes/ssn");
        assert!(open(&key, &other, &s).is_err());
        assert!(open(&field_key(&bucket(), &other), &p, &s).is_err());
        let mut moved = p;
        moved.record_id = "01JD000000000000000000000B";
        assert!(open(&key, &moved, &s).is_err());
        let mut tenant = p;
        tenant.tenant = "evil";
        assert!(open(&key, &tenant, &s).is_err());
        // A relabelled classification or key id breaks the tag too.
        let mut relabelled = s.clone();
        relabelled.cls = Classification::Public;
        assert!(open(&key, &p, &relabelled).is_err());
        let mut rekeyed = s.clone();
        rekeyed.kid = "k-2".to_owned();
        assert!(open(&key, &p, &rekeyed).is_err());
    }

    #[test]
    fn key_ids_name_their_policy_and_bucket() {
        let kid = key_id("gdpr-2y", "202612", [0xab; 16]);
        assert_eq!(kid_parts(&kid), Some(("gdpr-2y", "202612")));
        for bad in ["", "a.b", "a.b.c", "a.b.0123.x", &format!("{kid}.x")] {
            assert_eq!(kid_parts(bad), None, "{bad}");
        }
    }

    #[test]
    fn field_keys_differ_per_record_and_path() {
        let a = field_key(&bucket(), &place("/a"));
        let b = field_key(&bucket(), &place("/b"));
        assert_ne!(a, b);
        assert_eq!(FieldKey::from_base64(&a.to_base64()), Some(a));
    }

    #[test]
    fn sealed_values_are_found_where_they_are() {
        let p = place("/actor/id");
        let key = field_key(&bucket(), &p);
        let s = seal(
            &key,
            &p,
            Classification::Personal,
            "k-1",
            &json!("u-1"),
            [2u8; 24],
        )
        .unwrap();
        let data = json!({"actor": {"id": s, "type": "user"}, "action": "READ"});
        let found = sealed_values(&data);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "/actor/id");
        assert_eq!(found[0].1.kid, "k-1");
        let mut shown = data.clone();
        replace(&mut shown, "/actor/id", redacted(Classification::Personal));
        assert_eq!(shown["actor"]["id"], json!({"redacted": "personal"}));
        replace(&mut shown, "/actor/id", erased());
        assert_eq!(shown["actor"]["id"], json!({"erased": true}));
    }

    /// A known-answer vector: the stored form is part of the contract (docs/contract.md §8),
    /// so any change to derivation, associated data or encoding must show here.
    #[test]
    fn known_answer() {
        let p = place("/attributes/email");
        let key = field_key(&bucket(), &p);
        let s = seal(
            &key,
            &p,
            Classification::Personal,
            "k-1",
            &json!("ada"),
            [0u8; 24],
        )
        .unwrap();
        assert_eq!(
            key.to_base64(),
            "RCRLelnGBTpANmOTE1sNY7GAkyEOXW6L9XVvdUvMcJM="
        );
        assert_eq!(s.ct, "pGIC1/AIUJmaFREERlIfRV8Srdx7");
        assert_eq!(open(&key, &p, &s).unwrap(), json!("ada"));
    }
}
