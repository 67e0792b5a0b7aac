//! Verifiable CloudEvents with DSSE (cloudevents/spec `extensions/verifiability.md`), Ed25519 only.
//!
//! The signed payload is 32 bytes of "verification material": SHA-256 over the concatenated
//! SHA-256 digests of id, source, specversion, type, datacontenttype, dataschema, subject, time
//! (normalised to RFC 3339 UTC), data, then name and value of each signed extension attribute.
//! An absent attribute contributes the digest of the empty string. The DSSE v1.0.2 signature is
//! Ed25519 over `PAE(payloadType, material)`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const PAYLOAD_TYPE: &str = "https://cloudevents.io/verifiability/dsse/v0.1";

/// What the verification material covers. Optional attributes are `None` when absent.
#[derive(Debug, Clone, Default)]
pub struct SignedFields<'a> {
    pub id: Option<&'a str>,
    pub source: Option<&'a str>,
    pub specversion: Option<&'a str>,
    pub ty: Option<&'a str>,
    pub datacontenttype: Option<&'a str>,
    pub dataschema: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub time: Option<DateTime<Utc>>,
    /// The data bytes under ATP's profile: binary-mode body as sent, `data_base64` decoded, or
    /// the RFC 8785 canonical bytes of structured-mode JSON `data`.
    pub data: &'a [u8],
    /// Signed extension attributes in `signedextattrs` order.
    pub extensions: Vec<(&'a str, &'a str)>,
}

/// The RFC 3339 UTC form the material hashes: `2020-06-18T17:24:53Z`, fractional seconds only
/// when present.
pub fn normalise_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub fn verification_material(f: &SignedFields<'_>) -> [u8; 32] {
    fn d(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }
    let opt = |s: Option<&str>| d(s.unwrap_or("").as_bytes());
    let mut outer = Sha256::new();
    outer.update(opt(f.id));
    outer.update(opt(f.source));
    outer.update(opt(f.specversion));
    outer.update(opt(f.ty));
    outer.update(opt(f.datacontenttype));
    outer.update(opt(f.dataschema));
    outer.update(opt(f.subject));
    outer.update(d(f
        .time
        .as_ref()
        .map(normalise_time)
        .unwrap_or_default()
        .as_bytes()));
    outer.update(d(f.data));
    for (name, value) in &f.extensions {
        outer.update(d(name.as_bytes()));
        outer.update(d(value.as_bytes()));
    }
    outer.finalize().into()
}

/// DSSE v1 pre-authentication encoding.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + payload_type.len() + body.len());
    out.extend_from_slice(
        format!(
            "DSSEv1 {} {} {} ",
            payload_type.len(),
            payload_type,
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeJson {
    payload_type: String,
    payload: String,
    signatures: Vec<SignatureJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignatureJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
    sig: String,
}

/// A decoded `dssematerial`.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<(Option<String>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsseError {
    #[error("dssematerial is not valid base64")]
    Base64,
    #[error("dssematerial is not a DSSE JSON envelope: {0}")]
    Envelope(String),
    #[error("payloadType {0:?} is not {PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error("verification material must be 32 bytes, got {0}")]
    MaterialLength(usize),
    #[error("no signature with a key id registered for this source (saw {0:?})")]
    UnknownKey(Vec<String>),
    #[error("signature by key {0:?} does not verify")]
    BadSignature(String),
    #[error("the event does not match its signed verification material")]
    MaterialMismatch,
}

/// Decodes standard or URL-safe base64, padded or not (DSSE allows both alphabets).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(s)
        .ok()
        .or_else(|| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
}

impl Envelope {
    pub fn decode(dssematerial: &str) -> Result<Self, DsseError> {
        let raw = decode_base64(dssematerial).ok_or(DsseError::Base64)?;
        let env: EnvelopeJson =
            serde_json::from_slice(&raw).map_err(|e| DsseError::Envelope(e.to_string()))?;
        let payload = decode_base64(&env.payload).ok_or(DsseError::Base64)?;
        let signatures = env
            .signatures
            .into_iter()
            .map(|s| {
                decode_base64(&s.sig)
                    .map(|b| (s.keyid, b))
                    .ok_or(DsseError::Base64)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            payload_type: env.payload_type,
            payload,
            signatures,
        })
    }

    /// DSSE verification filtered to acceptable keys, then the payload checks of the
    /// verifiability extension. Returns the key id that verified.
    pub fn verify<'k>(
        &self,
        expected_material: &[u8; 32],
        keys: impl Fn(&str) -> Option<&'k VerifyingKey>,
    ) -> Result<String, DsseError> {
        let mut seen = Vec::new();
        let mut verified = None;
        for (keyid, sig) in &self.signatures {
            let Some(keyid) = keyid else { continue };
            let Some(key) = keys(keyid) else {
                seen.push(keyid.clone());
                continue;
            };
            let sig =
                Signature::from_slice(sig).map_err(|_| DsseError::BadSignature(keyid.clone()))?;
            key.verify_strict(&pae(&self.payload_type, &self.payload), &sig)
                .map_err(|_| DsseError::BadSignature(keyid.clone()))?;
            verified = Some(keyid.clone());
            break;
        }
        let keyid = verified.ok_or(DsseError::UnknownKey(seen))?;
        if self.payload_type != PAYLOAD_TYPE {
            return Err(DsseError::PayloadType(self.payload_type.clone()));
        }
        if self.payload.len() != 32 {
            return Err(DsseError::MaterialLength(self.payload.len()));
        }
        if self.payload.as_slice() != expected_material {
            return Err(DsseError::MaterialMismatch);
        }
        Ok(keyid)
    }
}

/// Signs verification material as a producer would; returns the `dssematerial` attribute value.
/// Used by ATP's own test producers, benchmarks and examples.
pub fn sign(material: &[u8; 32], key: &SigningKey, keyid: &str) -> String {
    let sig = key.sign(&pae(PAYLOAD_TYPE, material));
    let env = EnvelopeJson {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload: STANDARD.encode(material),
        signatures: vec![SignatureJson {
            keyid: Some(keyid.to_owned()),
            sig: STANDARD.encode(sig.to_bytes()),
        }],
    };
    // Serialising a struct of strings cannot fail.
    STANDARD.encode(serde_json::to_vec(&env).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The draft's test vectors use ECDSA P-256, which ATP does not accept, so only the signed
    /// payloads (the verification material) are compared here.
    fn payload_of(vector: &str) -> Vec<u8> {
        Envelope::decode(vector).unwrap().payload
    }

    fn hello_world() -> Vec<u8> {
        crate::canonical::to_canonical(&serde_json::json!({"hello": "world"})).unwrap()
    }

    #[test]
    fn case5_binary_data_reproduces_the_drafts_payload_digest() {
        let vector = "eyJwYXlsb2FkVHlwZSI6Imh0dHBzOi8vY2xvdWRldmVudHMuaW8vdmVyaWZpYWJpbGl0eS9kc3NlL3YwLjEiLCJwYXlsb2FkIjoicUNTZWlaa1MraEg5V2lDbGZxNnBsZnFZTlZ5Mmt2eFdSZm9CckxFem9Eaz0iLCJzaWduYXR1cmVzIjpbeyJrZXlpZCI6InRlc3RrZXkiLCJzaWciOiJEWXdiU3V4SDRXcWFhQlZPVlU4TllJYTZXYnZDazkvdkc5aGV0d3BKNHpJNWo2am1BTGRNaHcrcVZuc211YzY2NWZqVlJGVDFRUHUvanA1Z0c0U2pzUT09In1dfQ==";
        let data = decode_base64("8J+koQ==").unwrap();
        let m = verification_material(&SignedFields {
            id: Some("1"),
            source: Some("example/uri"),
            specversion: Some("1.0"),
            ty: Some("example.type.binary"),
            datacontenttype: Some("application/octet-stream"),
            data: &data,
            ..Default::default()
        });
        assert_eq!(m.to_vec(), payload_of(vector));
    }

    #[test]
    fn time_zone_normalisation_gives_cases_3_and_4_the_same_material() {
        let vector = "eyJwYXlsb2FkVHlwZSI6Imh0dHBzOi8vY2xvdWRldmVudHMuaW8vdmVyaWZpYWJpbGl0eS9kc3NlL3YwLjEiLCJwYXlsb2FkIjoid0tDYThzcTNkeWcvMDBaaURReS9hWEFZMXRlcFFucktMYTZ4UDBZM0QvUT0iLCJzaWduYXR1cmVzIjpbeyJrZXlpZCI6InRlc3RrZXkiLCJzaWciOiJQSXhPUHF3MGFJeW9acExtdU5DTlpNS3pBNlgxWVovUXpiZVR3UzMvS3BBMjZJQzF0SU9oLzdkRFBDMWk0RW82b1dxRk1WRXJ4cEZrR0hGMnM0MHAvZz09In1dfQ==";
        let data = hello_world();
        for t in ["2020-06-18T17:24:53Z", "2020-06-18T19:24:53+02:00"] {
            let time = DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
            let m = verification_material(&SignedFields {
                id: Some("1"),
                source: Some("example/uri"),
                specversion: Some("1.0"),
                ty: Some("example.type"),
                datacontenttype: Some("application/json"),
                subject: Some(""),
                time: Some(time),
                data: &data,
                ..Default::default()
            });
            // The draft leaves the bytes of structured JSON data open; whichever bytes it used,
            // both spellings of the same instant must give one material.
            let again = verification_material(&SignedFields {
                time: Some(
                    DateTime::parse_from_rfc3339("2020-06-18T17:24:53Z")
                        .unwrap()
                        .with_timezone(&Utc),
                ),
                id: Some("1"),
                source: Some("example/uri"),
                specversion: Some("1.0"),
                ty: Some("example.type"),
                datacontenttype: Some("application/json"),
                subject: Some(""),
                data: &data,
                ..Default::default()
            });
            assert_eq!(m, again);
        }
        assert_eq!(payload_of(vector).len(), 32);
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world")
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn sign_then_verify_and_every_failure_is_named() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let vk = key.verifying_key();
        let material = [9u8; 32];
        let env = Envelope::decode(&sign(&material, &key, "k1")).unwrap();
        assert_eq!(
            env.verify(&material, |id| (id == "k1").then_some(&vk))
                .unwrap(),
            "k1"
        );
        assert!(matches!(
            env.verify(&[8u8; 32], |id| (id == "k1").then_some(&vk)),
            Err(DsseError::MaterialMismatch)
        ));
        assert!(
            matches!(env.verify(&material, |_| None), Err(DsseError::UnknownKey(ids)) if ids == ["k1"])
        );
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(matches!(
            env.verify(&material, |_| Some(&other)),
            Err(DsseError::BadSignature(_))
        ));
        assert!(matches!(Envelope::decode("!!!"), Err(DsseError::Base64)));
        assert!(matches!(
            Envelope::decode(&STANDARD.encode("{}")),
            Err(DsseError::Envelope(_))
        ));
    }
}
