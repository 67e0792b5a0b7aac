//! C2SP `signed-note` with Ed25519 (the format of Go's `golang.org/x/mod/sumdb/note`).
//!
//! A note is a text ending in `\n`, a blank line, then signature lines
//! `— <key name> base64(key ID (4 bytes, big-endian) || signature)`. The key ID is
//! `SHA-256(name || 0x0A || 0x01 || public key)[:4]`, and a verifier key is written
//! `<name>+<8 hex key ID>+base64(0x01 || public key)`. Verifiers ignore signatures by keys
//! they do not know; a known key whose signature fails rejects the note.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;
/// The em dash and space that open a signature line.
const SIG_PREFIX: &str = "\u{2014} ";
/// Notes are small; refuse anything larger before parsing it.
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// At most this many signature lines are looked at (C2SP: accept at least 16).
const MAX_SIGNATURES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("key name {0:?} is empty or holds a space or '+'")]
    BadName(String),
    #[error("malformed verifier key")]
    BadVerifierKey,
    #[error("note text must be non-empty UTF-8 ending in a newline, without control characters")]
    BadText,
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    #[error("the signature by {name} (key ID {key_id:08x}) does not verify")]
    InvalidSignature { name: String, key_id: u32 },
    #[error("no signature by a known key")]
    UnverifiedNote,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

fn valid_text(text: &str) -> bool {
    !text.is_empty()
        && text.ends_with('\n')
        && text.len() <= MAX_NOTE_BYTES
        && !text.chars().any(|c| c.is_control() && c != '\n')
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]` as a big-endian integer.
pub fn key_id(name: &str, public: &VerifyingKey) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A verifier: a key name and an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Verifier {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &key),
            key,
        })
    }

    /// Parses `<name>+<hex key ID>+<base64(0x01 || public key)>`, checking the ID.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadVerifierKey);
        };
        let id = u32::from_str_radix(id_hex, 16).map_err(|_| NoteError::BadVerifierKey)?;
        let raw = B64.decode(b64).map_err(|_| NoteError::BadVerifierKey)?;
        let (&alg, key) = raw.split_first().ok_or(NoteError::BadVerifierKey)?;
        let key: [u8; 32] = key.try_into().map_err(|_| NoteError::BadVerifierKey)?;
        if alg != ED25519 || id_hex.len() != 8 {
            return Err(NoteError::BadVerifierKey);
        }
        let key = VerifyingKey::from_bytes(&key).map_err(|_| NoteError::BadVerifierKey)?;
        let v = Self::new(name, key)?;
        if v.key_id != id {
            return Err(NoteError::BadVerifierKey);
        }
        Ok(v)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn key_id(&self) -> u32 {
        self.key_id
    }
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// `<name>+<hex key ID>+<base64(0x01 || public key)>`.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(ED25519);
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }
}

/// Signs note texts with one Ed25519 key under one name.
#[derive(Debug, Clone)]
pub struct NoteSigner {
    verifier: Verifier,
    key: SigningKey,
}

impl NoteSigner {
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        Ok(Self {
            verifier: Verifier::new(name, key.verifying_key())?,
            key,
        })
    }
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// One signature line for `text` (with its trailing newline).
    pub fn signature_line(&self, text: &str) -> Result<String, NoteError> {
        if !valid_text(text) {
            return Err(NoteError::BadText);
        }
        let sig = self.key.sign(text.as_bytes());
        Ok(format_signature_line(
            &self.verifier.name,
            self.verifier.key_id,
            &sig.to_bytes(),
        ))
    }

    /// The signed note: `text`, a blank line, this key's signature line.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        let line = self.signature_line(text)?;
        Ok(format!("{text}\n{line}"))
    }
}

/// A signature line from its parts, for signers whose key is elsewhere (a key store, a KMS).
pub fn format_signature_line(name: &str, key_id: u32, sig: &[u8]) -> String {
    let mut raw = Vec::with_capacity(4 + sig.len());
    raw.extend_from_slice(&key_id.to_be_bytes());
    raw.extend_from_slice(sig);
    format!("{SIG_PREFIX}{name} {}\n", B64.encode(raw))
}

/// A signature line as found in a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    pub signature: Vec<u8>,
}

/// A note whose signatures were checked against a set of known verifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    pub text: &'a str,
    /// Signatures by known keys, all verified.
    pub verified: Vec<NoteSignature>,
    /// Signatures by keys not in the set (ignored, as C2SP requires).
    pub unknown: Vec<NoteSignature>,
}

/// Splits a signed note into its text and signature lines without checking signatures.
pub fn split(note: &str) -> Result<(&str, Vec<NoteSignature>), NoteError> {
    if note.len() > MAX_NOTE_BYTES + 64 * 1024 {
        return Err(NoteError::Malformed("too large"));
    }
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("control character"));
    }
    let blank = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = &note[..=blank];
    let sigs = &note[blank + 2..];
    if !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("signatures must end with a newline"));
    }
    let mut out = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        if out.len() == MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or(NoteError::Malformed("signature line without the em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line without a signature"))?;
        if !valid_name(name) {
            return Err(NoteError::Malformed("bad key name in a signature line"));
        }
        let raw = B64
            .decode(b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        out.push(NoteSignature {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            signature: raw[4..].to_vec(),
        });
    }
    if out.is_empty() {
        return Err(NoteError::Malformed("no signature lines"));
    }
    Ok((text, out))
}

/// Opens a note: every signature by a known key must verify, and at least one must exist.
pub fn open<'a>(note: &'a str, known: &[Verifier]) -> Result<Opened<'a>, NoteError> {
    let (text, sigs) = split(note)?;
    if !valid_text(text) {
        return Err(NoteError::BadText);
    }
    let mut opened = Opened {
        text,
        verified: Vec::new(),
        unknown: Vec::new(),
    };
    for sig in sigs {
        let Some(v) = known
            .iter()
            .find(|v| v.name == sig.name && v.key_id == sig.key_id)
        else {
            opened.unknown.push(sig);
            continue;
        };
        let ok = Signature::from_slice(&sig.signature)
            .is_ok_and(|s| v.key.verify_strict(text.as_bytes(), &s).is_ok());
        if !ok {
            return Err(NoteError::InvalidSignature {
                name: sig.name,
                key_id: sig.key_id,
            });
        }
        opened.verified.push(sig);
    }
    if opened.verified.is_empty() {
        return Err(NoteError::UnverifiedNote);
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::new(name, SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    /// The example key and note of Go's `golang.org/x/mod/sumdb/note` documentation:
    /// `PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW` signs
    /// "If you think cryptography is the answer to your problem,\n…".
    #[test]
    fn opens_the_go_documentation_example() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let v = Verifier::parse(vkey).unwrap();
        assert_eq!(v.encode(), vkey);
        let opened = open(note, &[v]).unwrap();
        assert_eq!(
            opened.text,
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
        );
        assert_eq!(opened.verified.len(), 1);
        // Ed25519 is deterministic: the same key (its private encoding in the same
        // documentation is `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALV…`) reproduces the note.
        let seed = B64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap();
        let key = SigningKey::from_bytes(seed[1..].try_into().unwrap());
        let signer = NoteSigner::new("PeterNeumann", key).unwrap();
        assert_eq!(signer.sign(opened.text).unwrap(), note);
    }

    #[test]
    fn round_trip_and_verifier_key_format() {
        let s = signer("atp.example/log", 7);
        let note = s.sign("hello\nworld\n").unwrap();
        let vkey = s.verifier().encode();
        let parsed = Verifier::parse(&vkey).unwrap();
        assert_eq!(&parsed, s.verifier());
        assert!(vkey.starts_with("atp.example/log+"));
        let opened = open(&note, &[parsed]).unwrap();
        assert_eq!(opened.text, "hello\nworld\n");
    }

    #[test]
    fn tampered_text_or_signature_is_refused() {
        let s = signer("log", 1);
        let note = s.sign("a\nb\n").unwrap();
        let v = [s.verifier().clone()];
        let altered = note.replacen("a\n", "c\n", 1);
        assert!(matches!(
            open(&altered, &v),
            Err(NoteError::InvalidSignature { .. })
        ));
        // A signature by the same name with another key is unknown, hence unverified.
        let other = signer("log", 2).sign("a\nb\n").unwrap();
        assert_eq!(open(&other, &v), Err(NoteError::UnverifiedNote));
    }

    #[test]
    fn unknown_signatures_are_ignored_but_one_known_is_required() {
        let a = signer("a.example", 1);
        let b = signer("b.example", 2);
        let text = "t\n";
        let note = format!(
            "{text}\n{}{}",
            a.signature_line(text).unwrap(),
            b.signature_line(text).unwrap()
        );
        let opened = open(&note, &[b.verifier().clone()]).unwrap();
        assert_eq!(opened.verified.len(), 1);
        assert_eq!(opened.unknown.len(), 1);
        assert_eq!(
            open(&note, &[signer("c", 3).verifier().clone()]),
            Err(NoteError::UnverifiedNote)
        );
    }

    #[test]
    fn bad_names_texts_and_keys_are_refused() {
        assert!(NoteSigner::new("has space", SigningKey::from_bytes(&[1; 32])).is_err());
        assert!(NoteSigner::new("a+b", SigningKey::from_bytes(&[1; 32])).is_err());
        let s = signer("n", 1);
        assert_eq!(s.sign("no newline"), Err(NoteError::BadText));
        assert_eq!(s.sign("tab\there\n"), Err(NoteError::BadText));
        assert!(Verifier::parse("n+00000000+AQ==").is_err());
        let mut vkey = s.verifier().encode();
        vkey.replace_range(2..4, "ff");
        assert!(Verifier::parse(&vkey).is_err(), "wrong key id");
    }
}
