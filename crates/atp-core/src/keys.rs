//! Checkpoint signing keys as ATP publishes them (CONTRACT §4): the public half, its note
//! verifier key and its validity window. Rotation adds a key and closes the previous one's
//! window; no key is ever removed, so every old checkpoint stays verifiable.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{self, EncodePrivateKey as _, KeypairBytes, SecretDocument};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::note::{NoteError, Verifier};
use crate::record::timestamp;

/// One signing key, public half only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedKey {
    /// The note key ID in 8 lowercase hex digits: the same value a checkpoint's signature line
    /// starts with, so a signature names its key.
    pub kid: String,
    /// The note key name: the log operator's name, shared by every key of the deployment.
    pub name: String,
    /// The Ed25519 public key, standard base64.
    pub public_key: String,
    /// `<name>+<kid>+<base64(0x01 || public key)>`, what `note.Open` takes.
    pub verifier_key: String,
    pub not_before: String,
    /// Set when the key was rotated out: no checkpoint after this instant uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

impl PublishedKey {
    pub fn new(
        name: &str,
        public: &VerifyingKey,
        not_before: DateTime<Utc>,
    ) -> Result<Self, NoteError> {
        let verifier = Verifier::new(name, *public)?;
        Ok(Self {
            kid: format!("{:08x}", verifier.key_id()),
            name: name.to_owned(),
            public_key: B64.encode(public.as_bytes()),
            verifier_key: verifier.encode(),
            not_before: timestamp(not_before),
            not_after: None,
        })
    }

    /// The verifier, checked against the other fields (a tampered entry is refused).
    pub fn verifier(&self) -> Result<Verifier, NoteError> {
        let v = Verifier::parse(&self.verifier_key)?;
        let consistent = v.name() == self.name
            && format!("{:08x}", v.key_id()) == self.kid
            && B64.encode(v.public_key().as_bytes()) == self.public_key;
        if consistent {
            Ok(v)
        } else {
            Err(NoteError::BadVerifierKey)
        }
    }

    pub fn is_active(&self) -> bool {
        self.not_after.is_none()
    }

    /// The JWKS entry (RFC 8037 OKP/Ed25519) with ATP's note and validity members.
    pub fn jwk(&self) -> Jwk {
        let x = B64
            .decode(&self.public_key)
            .map(|k| B64URL.encode(k))
            .unwrap_or_default();
        Jwk {
            kty: "OKP",
            crv: "Ed25519",
            kid: self.kid.clone(),
            x,
            usage: "sig",
            alg: "EdDSA",
            note_verifier_key: self.verifier_key.clone(),
            not_before: self.not_before.clone(),
            not_after: self.not_after.clone(),
        }
    }
}

/// A checkpoint signing key as a JSON Web Key (RFC 8037 `OKP`/`Ed25519`), with ATP's note
/// verifier key and validity window beside the standard members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Jwk {
    /// `OKP`.
    pub kty: &'static str,
    /// `Ed25519`.
    pub crv: &'static str,
    /// The note key ID in 8 lowercase hex digits, as a checkpoint's signature line names it.
    pub kid: String,
    /// The public key, base64url without padding.
    pub x: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub usage: &'static str,
    /// `EdDSA`.
    pub alg: &'static str,
    /// `<name>+<kid>+<base64(0x01 || public key)>`, what Go's `note.Open` takes.
    pub note_verifier_key: String,
    /// RFC 3339: the first instant the key signs.
    pub not_before: String,
    /// RFC 3339: set once the key was rotated out.
    pub not_after: Option<String>,
}

/// A JSON Web Key Set of checkpoint signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A private key as PKCS#8 v1 DER (RFC 5208 `PrivateKeyInfo`, version 0, the 32-byte seed
/// only), the one form ATP writes.
///
/// Why v1: ed25519-dalek's own `to_pkcs8_*` writes v2 (RFC 5958 `OneAsymmetricKey`, version 1,
/// with the public key embedded), and OpenSSL 3.0 — Debian 12's `openssl pkey` — and Python's
/// `cryptography` refuse that for Ed25519, so keys from `atp dev` could not be used by the
/// tools an operator or a producer reaches for. v1 is what `openssl genpkey -algorithm
/// ed25519` writes and what every reader accepts; the public key is derived from the seed
/// anyway, so nothing is lost. `atp_runtime::signer::read_private` still reads both forms: v2 files written before
/// keep loading (and a v2 public key that does not match its seed is refused).
// The one call clippy.toml allows: `KeypairBytes` without its public key encodes as v1.
#[allow(clippy::disallowed_methods)]
pub fn encode_private_key(key: &SigningKey) -> Result<SecretDocument, pkcs8::Error> {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_der()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    #[test]
    fn published_key_carries_a_matching_verifier_and_jwk() {
        let key = SigningKey::from_bytes(&[3; 32]).verifying_key();
        let at = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let pk = PublishedKey::new("atp.example", &key, at).unwrap();
        let v = pk.verifier().unwrap();
        assert_eq!(format!("{:08x}", v.key_id()), pk.kid);
        let jwk = serde_json::to_value(pk.jwk()).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(
            B64URL.decode(jwk["x"].as_str().unwrap()).unwrap(),
            key.as_bytes()
        );
        assert_eq!(jwk["notAfter"], serde_json::Value::Null);
        let mut forged = pk.clone();
        forged.public_key = B64.encode([4u8; 32]);
        assert!(forged.verifier().is_err());
    }
}
