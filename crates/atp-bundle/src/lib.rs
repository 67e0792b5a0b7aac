//! Export bundles (CONTRACT §6): a tar that anyone can check offline, with `openssl` and
//! `sha256sum` alone or fully with `atp verify`.
//!
//! ```text
//! records/part-NNNNN.jsonl                   one record per line: its canonical bytes, "\n"
//! proofs.jsonl                               line k proves record k: digest, inclusion proof, tlog-proof
//! disclosures.jsonl                          (when any) the clear values the requester may read, with
//!                                            the field key that opens each in its record
//! checkpoints/<tenant>/<source>.checkpoint   the signed notes the proofs are against
//! SHA256SUMS                                 `sha256sum` lines for every file above and signing-key.pem
//! manifest.json                              RFC 8785: what was selected, every file's hash, the keys
//! manifest.sig                               raw 64-byte Ed25519 signature over manifest.json
//! signing-key.pem                            the SubjectPublicKeyInfo PEM that made manifest.sig
//! ```
//!
//! `disclosures.jsonl` ([`disclosure`], ADR 0020) is there only when the bundle discloses a
//! value: bundles without it (every bundle before disclosures, and any whose requester reads
//! no sealed value) verify as before.
//!
//! Bundles written before `signing-key.pem` was listed in `SHA256SUMS` (and the manifest's
//! `files`) still verify: the key is checked against its line when it has one.
//!
//! Records are in record order: by source, then chain index. The archive is deterministic:
//! the same selection over the same log gives the same bytes, which is what lets a crashed
//! exporter start over and still produce the bundle it would have produced.
//!
//! [`write::BundleWriter`] builds bundles with bounded memory (one part in memory, proofs
//! spooled to disk); [`verify::verify`] checks one, naming the first bad record.

pub mod disclosure;
pub mod verify;
pub mod write;

use std::io::{self, Write};

use atp_core::Digest;
use atp_core::checkpoint::TlogProof;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SIG: &str = "manifest.sig";
pub const SIGNING_KEY: &str = "signing-key.pem";
pub const SHA256SUMS: &str = "SHA256SUMS";
pub const PROOFS: &str = "proofs.jsonl";
pub const DISCLOSURES: &str = "disclosures.jsonl";
pub const MEDIA_TYPE: &str = "application/x-tar";

/// A records part ends before the record that would take it past this many bytes…
pub const PART_MAX_BYTES: usize = 64 * 1024 * 1024;
/// …or at this many records, whichever comes first.
pub const PART_MAX_RECORDS: u64 = 100_000;

/// `records/part-NNNNN.jsonl`, numbered from 0.
pub fn part_path(n: u32) -> String {
    format!("records/part-{n:05}.jsonl")
}

/// `checkpoints/<tenant>/<source>.checkpoint`.
pub fn checkpoint_path(tenant: &str, source: &str) -> String {
    format!("checkpoints/{tenant}/{source}.checkpoint")
}

/// The part number of a `records/part-NNNNN.jsonl` path.
pub fn part_number(path: &str) -> Option<u32> {
    let n = path.strip_prefix("records/part-")?.strip_suffix(".jsonl")?;
    (n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// `manifest.json`. Serialized as RFC 8785 (members in code-unit order, no whitespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub export_id: String,
    pub tenant_id: String,
    pub created_at: String,
    /// The filters the records were selected by, as requested.
    pub selection: serde_json::Value,
    pub record_count: u64,
    /// Exactly what `SHA256SUMS` lists: every file but `manifest.json`, `manifest.sig` and
    /// `SHA256SUMS`, in archive order (so `signing-key.pem` last). Bundles written before the
    /// key was listed leave it out of both.
    pub files: Vec<FileEntry>,
    /// SHA-256 of `SHA256SUMS`, lowercase hex.
    pub sha256sums: String,
    /// The note key ID (8 hex digits) of the key that signed the manifest.
    pub key_id: String,
    /// One per partition with records in the bundle.
    pub checkpoints: Vec<CheckpointEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    /// Lowercase hex, as `sha256sum` prints it.
    pub sha256: String,
    pub bytes: u64,
}

/// The checkpoint a partition's proofs are against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointEntry {
    pub tenant_id: String,
    pub source_id: String,
    pub path: String,
    pub tree_size: u64,
    /// Base64, as in the checkpoint body.
    pub root_hash: String,
    /// The note verifier key of the key that signed the checkpoint (`name+kid+key`). Keys
    /// rotate, so it may differ from the manifest's; `--key` decides which ones to trust.
    pub verifier_key: String,
}

impl Manifest {
    /// The bytes `manifest.json` holds and `manifest.sig` signs.
    pub fn to_canonical(&self) -> Result<Vec<u8>, atp_core::canonical::CanonicalError> {
        let value = serde_json::to_value(self)
            .map_err(|e| atp_core::canonical::CanonicalError::Canonicalize(e.to_string()))?;
        atp_core::canonical::to_canonical(&value)
    }
}

/// One line of `proofs.jsonl`: why record k is in its partition's log.
///
/// Members are declared in RFC 8785 order and hold only ASCII without control characters
/// (the tlog-proof's newlines escape as `\n`), so serde_json's compact output is already
/// canonical; a test holds it to that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProofLine {
    pub chain_index: u64,
    pub digest: Digest,
    /// Base64 hashes, leaf sibling first (RFC 9162 inclusion path).
    pub inclusion_proof: Vec<String>,
    pub record_id: String,
    pub source_id: String,
    pub tenant_id: String,
    /// C2SP `tlog-proof@v1` text: the index, the same hashes, the checkpoint verbatim.
    pub tlog_proof: String,
    pub tree_size: u64,
}

impl ProofLine {
    /// The line for record `chain_index` of a partition, proven by `hashes` against the signed
    /// checkpoint `note` of a tree of `tree_size` leaves.
    pub fn new(
        head: &atp_core::record::RecordHead<'_>,
        digest: Digest,
        tree_size: u64,
        hashes: Vec<Digest>,
        note: &str,
    ) -> Self {
        let inclusion_proof = hashes.iter().map(|h| B64.encode(h.0)).collect();
        let tlog_proof = TlogProof {
            extra: None,
            index: head.chain_index,
            hashes,
            checkpoint: note.to_owned(),
        }
        .to_text();
        Self {
            chain_index: head.chain_index,
            digest,
            inclusion_proof,
            record_id: head.record_id.to_string(),
            source_id: head.source_id.to_string(),
            tenant_id: head.tenant_id.to_string(),
            tlog_proof,
            tree_size,
        }
    }
}

/// A writer that hashes and counts what passes through it.
#[derive(Debug)]
pub struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }
    /// The inner writer, the SHA-256 (hex) and the byte count of everything written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hash.finalize()), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
