//! The gateway's attestation on submissions it forwards to `atp.ingress.*`.
//!
//! Producers may publish to ingress directly, with any headers they like, so a header saying
//! "the gateway authenticated token subject X" proves nothing by itself. The gateway therefore
//! signs (ingress subject, token subject, SHA-256 of the body) with its Ed25519 key, and the
//! ingest worker accepts the gateway channel only with a valid signature.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

fn message(ingress_subject: &str, token_subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"atp-gateway-attestation-v1\n");
    m.extend_from_slice(ingress_subject.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(token_subject.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&Sha256::digest(body));
    m
}

pub fn sign(key: &SigningKey, ingress_subject: &str, token_subject: &str, body: &[u8]) -> [u8; 64] {
    key.sign(&message(ingress_subject, token_subject, body))
        .to_bytes()
}

pub fn verify(
    key: &VerifyingKey,
    ingress_subject: &str,
    token_subject: &str,
    body: &[u8],
    sig: &[u8],
) -> bool {
    let Ok(sig) = Signature::from_slice(sig) else {
        return false;
    };
    key.verify_strict(&message(ingress_subject, token_subject, body), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_subject_token_and_body() {
        let k = SigningKey::from_bytes(&[1u8; 32]);
        let vk = k.verifying_key();
        let sig = sign(&k, "atp.ingress.acme.crm", "svc", b"{}");
        assert!(verify(&vk, "atp.ingress.acme.crm", "svc", b"{}", &sig));
        assert!(!verify(&vk, "atp.ingress.globex.crm", "svc", b"{}", &sig));
        assert!(!verify(&vk, "atp.ingress.acme.crm", "admin", b"{}", &sig));
        assert!(!verify(&vk, "atp.ingress.acme.crm", "svc", b"[]", &sig));
        assert!(!verify(
            &vk,
            "atp.ingress.acme.crm",
            "svc",
            b"{}",
            &sig[..63]
        ));
    }
}
