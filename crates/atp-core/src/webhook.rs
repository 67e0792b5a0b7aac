//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), for systems that can only
//! call webhooks (`POST /api/v1/ingest/webhooks/{sourceId}`).
//!
//! A sender signs `{webhook-id}.{webhook-timestamp}.{body}` and sends the signatures in
//! `webhook-signature`, space-separated, each `v1,<base64 HMAC-SHA256>` (a shared `whsec_`
//! secret) or `v1a,<base64 Ed25519>` (a key pair). ATP verifies `v1` against the source's
//! webhook secrets and `v1a` against the source's producer keys, the ones its signed events
//! use; revoked ones verify nothing. The timestamp must be within [`TOLERANCE`] of ATP's
//! clock: a captured request cannot be replayed later, and within the window its
//! `webhook-id` is the event's id, so a replay is answered as the record it already made.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use hmac::{KeyInit as _, Mac as _};

use crate::registry::SourceRegistration;

/// How far `webhook-timestamp` may be from ATP's clock, either way (the specification's 5
/// minutes).
pub const TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);
/// How a shared secret is written.
pub const SECRET_PREFIX: &str = "whsec_";
/// Longest `webhook-id` taken: it becomes the event's id when the body names none.
pub const MAX_ID_LEN: usize = 256;
/// Signatures read from one `webhook-signature` at most (a sender lists one per secret it is
/// rotating through).
const MAX_SIGNATURES: usize = 8;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Who a verified webhook came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// `v1`: the source's webhook secret with this id.
    Hmac { secret_id: String },
    /// `v1a`: the source's producer key with this id.
    Ed25519 { key_id: String },
}

impl Signer {
    /// The scheme and the id, as the record's `producer` says how the event came in:
    /// (`webhook:hmac` or `webhook:ed25519`, the secret or key id).
    pub fn stamp(&self) -> (&'static str, &str) {
        match self {
            Signer::Hmac { secret_id } => ("webhook:hmac", secret_id),
            Signer::Ed25519 { key_id } => ("webhook:ed25519", key_id),
        }
    }
}

/// The token subject the gateway attests for a verified webhook
/// (`webhook:hmac:<secret id>`, `webhook:ed25519:<key id>`). Token subjects with the
/// `webhook:` prefix are refused at the gateway, so only a webhook's verification makes one.
pub fn gateway_subject(signer: &Signer) -> String {
    let (scheme, id) = signer.stamp();
    format!("{scheme}:{id}")
}

/// The record's `producer` (`auth`, `keyId`) for a submission the gateway attested under
/// `subject`, when that is a webhook's ([`gateway_subject`]).
pub fn stamp_of_subject(subject: &str) -> Option<(&str, &str)> {
    ["webhook:hmac:", "webhook:ed25519:"]
        .into_iter()
        .find_map(|prefix| {
            let id = subject.strip_prefix(prefix)?;
            Some((&prefix[..prefix.len() - 1], id))
        })
}

/// Token subjects the gateway refuses: they would read as a webhook's.
pub const RESERVED_SUBJECT_PREFIX: &str = "webhook:";

/// Why a webhook is refused. The messages name the header at fault, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing the {0} header")]
    Missing(&'static str),
    #[error("webhook-id must be 1 to 256 printable ASCII characters")]
    BadId,
    #[error("webhook-timestamp must be whole seconds since the Unix epoch")]
    BadTimestamp,
    #[error(
        "webhook-timestamp is {0} s from ATP's clock; at most 300 s either way (a replay, or a clock to fix)"
    )]
    OutsideWindow(i64),
    #[error(
        "no signature in webhook-signature verifies with this source's webhook secrets or keys"
    )]
    NoMatch,
}

/// The headers as they came.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a webhook to `reg`'s source at `now`: the signer, or why not.
pub fn verify(
    reg: &SourceRegistration,
    headers: Headers<'_>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Signer, WebhookError> {
    let id = headers.id.ok_or(WebhookError::Missing(ID_HEADER))?;
    let timestamp = headers
        .timestamp
        .ok_or(WebhookError::Missing(TIMESTAMP_HEADER))?;
    let signatures = headers
        .signature
        .ok_or(WebhookError::Missing(SIGNATURE_HEADER))?;
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WebhookError::BadId);
    }
    let seconds: i64 = timestamp.parse().map_err(|_| WebhookError::BadTimestamp)?;
    let sent = DateTime::from_timestamp(seconds, 0).ok_or(WebhookError::BadTimestamp)?;
    let skew = sent - now;
    if skew.abs() > TOLERANCE {
        return Err(WebhookError::OutsideWindow(skew.num_seconds()));
    }
    let content = signed_content(id, timestamp, body);
    for candidate in signatures.split(' ').take(MAX_SIGNATURES) {
        let Some((version, b64)) = candidate.split_once(',') else {
            continue;
        };
        let Ok(sig) = STANDARD.decode(b64) else {
            continue;
        };
        match version {
            "v1" => {
                for s in reg
                    .webhook_secrets
                    .iter()
                    .filter(|s| s.revoked_at.is_none())
                {
                    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&s.secret) else {
                        continue;
                    };
                    mac.update(&content);
                    if mac.verify_slice(&sig).is_ok() {
                        return Ok(Signer::Hmac {
                            secret_id: s.id.clone(),
                        });
                    }
                }
            }
            "v1a" => {
                let Ok(sig) = Signature::from_slice(&sig) else {
                    continue;
                };
                for k in reg.keys.iter().filter(|k| k.revoked_at.is_none()) {
                    if k.verifying_key()
                        .is_some_and(|vk| vk.verify_strict(&content, &sig).is_ok())
                    {
                        return Ok(Signer::Ed25519 {
                            key_id: k.key_id.clone(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Err(WebhookError::NoMatch)
}

/// What a signature covers: `{id}.{timestamp}.{body}`.
fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// A `v1` signature, as a sender makes it (tests, `atp` tooling).
pub fn sign_hmac(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).map(|mut mac| {
        mac.update(&signed_content(id, timestamp, body));
        mac.finalize().into_bytes()
    });
    match mac {
        Ok(m) => format!("v1,{}", STANDARD.encode(m)),
        // HMAC takes a key of any length.
        Err(_) => String::new(),
    }
}

/// A `v1a` signature, as a sender makes it.
pub fn sign_ed25519(key: &SigningKey, id: &str, timestamp: &str, body: &[u8]) -> String {
    let sig = key.sign(&signed_content(id, timestamp, body));
    format!("v1a,{}", STANDARD.encode(sig.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{SourceId, TenantId};
    use crate::registry::{ProducerKey, WebhookSecret};

    fn reg(key: &SigningKey) -> SourceRegistration {
        let mut r = SourceRegistration::new(
            TenantId::new("acme").unwrap(),
            SourceId::new("crm").unwrap(),
            "urn:crm",
        );
        let at = DateTime::from_timestamp(0, 0).unwrap();
        r.keys
            .push(ProducerKey::new("k1", key.verifying_key().to_bytes(), at));
        r.webhook_secrets.push(WebhookSecret {
            id: "wh1".into(),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            created_at: at,
            revoked_at: None,
        });
        r
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Headers<'a> {
        Headers {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn both_schemes_verify_and_name_their_signer() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let r = reg(&key);
        let body = br#"{"sourceId":"crm"}"#;
        let hmac = sign_hmac(&r.webhook_secrets[0].secret, "msg_1", "1000", body);
        assert_eq!(
            verify(&r, headers("msg_1", "1000", &hmac), body, at(1010)),
            Ok(Signer::Hmac {
                secret_id: "wh1".into()
            })
        );
        let ed = sign_ed25519(&key, "msg_1", "1000", body);
        // A list: an unknown version and a stale signature first, then the good one.
        let list = format!("v2,AAAA {} {ed}", sign_hmac(b"old", "msg_1", "1000", body));
        assert_eq!(
            verify(&r, headers("msg_1", "1000", &list), body, at(990)),
            Ok(Signer::Ed25519 {
                key_id: "k1".into()
            })
        );
    }

    #[test]
    fn tampering_replay_and_revocation_are_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut r = reg(&key);
        let body = b"{}";
        let sig = sign_hmac(&r.webhook_secrets[0].secret, "msg_1", "1000", body);
        let refuse = |r: &SourceRegistration, h: Headers<'_>, body: &[u8], now| {
            verify(r, h, body, at(now)).unwrap_err()
        };
        assert_eq!(
            refuse(&r, headers("msg_1", "1000", &sig), b"{ }", 1000),
            WebhookError::NoMatch
        );
        assert_eq!(
            refuse(&r, headers("msg_2", "1000", &sig), body, 1000),
            WebhookError::NoMatch
        );
        assert_eq!(
            refuse(&r, headers("msg_1", "1001", &sig), body, 1000),
            WebhookError::NoMatch
        );
        assert_eq!(
            refuse(&r, headers("msg_1", "1000", &sig), body, 1301),
            WebhookError::OutsideWindow(-301)
        );
        assert_eq!(
            refuse(&r, headers("msg_1", "1000", &sig), body, 699),
            WebhookError::OutsideWindow(301)
        );
        assert_eq!(
            refuse(&r, headers("msg 1", "1000", &sig), body, 1000),
            WebhookError::BadId
        );
        assert_eq!(
            refuse(&r, headers("msg_1", "1e3", &sig), body, 1000),
            WebhookError::BadTimestamp
        );
        let missing = Headers {
            signature: None,
            ..headers("msg_1", "1000", &sig)
        };
        assert_eq!(
            refuse(&r, missing, body, 1000),
            WebhookError::Missing(SIGNATURE_HEADER)
        );
        r.webhook_secrets[0].revoked_at = Some(at(1));
        assert_eq!(
            refuse(&r, headers("msg_1", "1000", &sig), body, 1000),
            WebhookError::NoMatch
        );
        let ed = sign_ed25519(&key, "msg_1", "1000", body);
        r.keys[0].revoked_at = Some(at(1));
        assert_eq!(
            refuse(&r, headers("msg_1", "1000", &ed), body, 1000),
            WebhookError::NoMatch
        );
    }

    #[test]
    fn the_attested_subject_says_how_it_came_in() {
        for signer in [
            Signer::Hmac {
                secret_id: "wh1".into(),
            },
            Signer::Ed25519 {
                key_id: "k:1".into(),
            },
        ] {
            let subject = gateway_subject(&signer);
            assert!(subject.starts_with(RESERVED_SUBJECT_PREFIX));
            assert_eq!(stamp_of_subject(&subject), Some(signer.stamp()));
        }
        assert_eq!(stamp_of_subject("svc-crm"), None);
        assert_eq!(stamp_of_subject("webhook:other:x"), None);
    }

    #[test]
    fn secrets_never_print_and_travel_as_whsec() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let r = reg(&key);
        let s = &r.webhook_secrets[0];
        assert!(!format!("{r:?}").contains("0123456789"));
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["secret"], s.to_whsec());
        assert!(s.to_whsec().starts_with("whsec_"));
        let back: WebhookSecret = serde_json::from_value(json).unwrap();
        assert_eq!(&back, s);
    }
}
