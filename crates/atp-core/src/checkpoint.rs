//! Checkpoints (C2SP `tlog-checkpoint`), proofs (C2SP `tlog-proof@v1`) and the offline check
//! that ties a record to a signed checkpoint (CONTRACT §3–§4).
//!
//! A checkpoint body is `<origin>\n<tree size>\n<base64 root>\n`; the origin of a partition's
//! log is `<origin prefix>/<tenantId>/<sourceId>`. It is signed as a [`crate::note`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::chain::Digest;
use crate::merkle::{self, ProofError};
use crate::names::PartitionKey;
use crate::note::{self, NoteError, Verifier};

/// The first line of a C2SP tlog proof.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("malformed tlog proof: {0}")]
    MalformedProof(&'static str),
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    #[error("checkpoint origin {found:?} is not this partition's log ({expected:?})")]
    WrongOrigin { expected: String, found: String },
    #[error("record digest {found} is not the proof's digest {expected}")]
    DigestMismatch { expected: Digest, found: Digest },
    #[error("record is chain index {record} but the proof is for leaf {proof}")]
    IndexMismatch { record: u64, proof: u64 },
}

/// The log origin of a partition: `<prefix>/<tenantId>/<sourceId>`.
pub fn origin(prefix: &str, partition: &PartitionKey) -> String {
    format!("{prefix}/{}/{}", partition.tenant, partition.source)
}

/// ASCII digits without a sign or a leading zero (C2SP: the size as its canonical decimal).
fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// An unsigned checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Digest,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root.0)
        )
    }

    /// Parses a body. Extension lines after the root are allowed (and ignored) but, as C2SP
    /// says, must not be empty.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed("body must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError::Malformed("no origin"))?;
        let size = lines
            .next()
            .and_then(parse_decimal)
            .ok_or(CheckpointError::Malformed(
                "tree size is not a plain decimal",
            ))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or(CheckpointError::Malformed("root is not a base64 SHA-256"))?;
        if lines.any(str::is_empty) {
            return Err(CheckpointError::Malformed("empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root: Digest(root),
        })
    }

    /// Opens a signed checkpoint with the known verifier keys.
    pub fn open(signed: &str, known: &[Verifier]) -> Result<Self, CheckpointError> {
        let opened = note::open(signed, known)?;
        Self::parse(opened.text)
    }
}

/// A C2SP `tlog-proof@v1`: an entry's index, its inclusion proof and the checkpoint verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub hashes: Vec<Digest>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
}

impl TlogProof {
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(64 + self.hashes.len() * 45 + self.checkpoint.len());
        out.push_str(TLOG_PROOF_HEADER);
        out.push('\n');
        if let Some(extra) = &self.extra {
            out.push_str("extra ");
            out.push_str(&B64.encode(extra));
            out.push('\n');
        }
        out.push_str(&format!("index {}\n", self.index));
        for h in &self.hashes {
            out.push_str(&B64.encode(h.0));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let bad = CheckpointError::MalformedProof;
        let rest = text
            .strip_prefix(TLOG_PROOF_HEADER)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or(bad("missing the c2sp.org/tlog-proof@v1 line"))?;
        let (mut line, mut rest) = rest.split_once('\n').ok_or(bad("truncated"))?;
        let mut extra = None;
        if let Some(b64) = line.strip_prefix("extra ") {
            extra = Some(B64.decode(b64).map_err(|_| bad("extra is not base64"))?);
            (line, rest) = rest.split_once('\n').ok_or(bad("truncated"))?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(parse_decimal)
            .ok_or(bad("missing index line"))?;
        let mut hashes = Vec::new();
        loop {
            let (line, after) = rest.split_once('\n').ok_or(bad("no checkpoint"))?;
            rest = after;
            if line.is_empty() {
                break;
            }
            let h = B64
                .decode(line)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or(bad("proof line is not a base64 SHA-256"))?;
            hashes.push(Digest(h));
        }
        if rest.is_empty() {
            return Err(bad("no checkpoint"));
        }
        Ok(Self {
            extra,
            index,
            hashes,
            checkpoint: rest.to_owned(),
        })
    }
}

/// What an offline check of one record established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedInclusion {
    pub digest: Digest,
    pub leaf_index: u64,
    pub checkpoint: Checkpoint,
    /// Names and key IDs of the keys whose signatures verified.
    pub signed_by: Vec<(String, u32)>,
}

/// Checks that `record_bytes` (a record's canonical bytes, declaring `chain_index` in
/// `partition`) is leaf `proof.index` of the log whose checkpoint `proof.checkpoint` is signed
/// by one of `known` keys, for the origin `<origin_prefix>/<tenant>/<source>`.
///
/// `origin_prefix` is `None` when the caller trusts any origin that ends in the partition's
/// `/<tenant>/<source>` (the verifier key alone then pins the log operator).
pub fn verify_record(
    record_bytes: &[u8],
    partition: &PartitionKey,
    chain_index: u64,
    proof: &TlogProof,
    known: &[Verifier],
    origin_prefix: Option<&str>,
) -> Result<VerifiedInclusion, CheckpointError> {
    let opened = note::open(&proof.checkpoint, known)?;
    let checkpoint = Checkpoint::parse(opened.text)?;
    let suffix = format!("/{}/{}", partition.tenant, partition.source);
    let origin_ok = match origin_prefix {
        Some(prefix) => checkpoint.origin == origin(prefix, partition),
        None => checkpoint.origin.ends_with(&suffix),
    };
    if !origin_ok {
        return Err(CheckpointError::WrongOrigin {
            expected: origin_prefix.map_or_else(|| format!("…{suffix}"), |p| origin(p, partition)),
            found: checkpoint.origin,
        });
    }
    if chain_index != proof.index {
        return Err(CheckpointError::IndexMismatch {
            record: chain_index,
            proof: proof.index,
        });
    }
    let leaf = merkle::leaf_hash(record_bytes);
    merkle::verify_inclusion(
        proof.index,
        checkpoint.size,
        &leaf,
        &proof.hashes,
        &checkpoint.root,
    )?;
    Ok(VerifiedInclusion {
        digest: Digest::of(record_bytes),
        leaf_index: proof.index,
        checkpoint,
        signed_by: opened
            .verified
            .into_iter()
            .map(|s| (s.name, s.key_id))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::merkle::{ProofPlan, leaf_hash, root_of};
    use crate::names::{SourceId, TenantId};
    use crate::note::NoteSigner;

    fn partition() -> PartitionKey {
        PartitionKey::new(
            TenantId::new("acme").unwrap(),
            SourceId::new("crm").unwrap(),
        )
    }

    /// A log of `n` fake records, its signer and a proof for record `i`.
    fn fixture(n: usize, i: usize) -> (Vec<Vec<u8>>, NoteSigner, TlogProof) {
        let records: Vec<Vec<u8>> = (0..n)
            .map(|k| format!("{{\"chainIndex\":{k}}}").into_bytes())
            .collect();
        let leaves: Vec<Digest> = records.iter().map(|r| leaf_hash(r)).collect();
        let signer = NoteSigner::new("atp.test", SigningKey::from_bytes(&[9; 32])).unwrap();
        let cp = Checkpoint {
            origin: origin("atp.test", &partition()),
            size: n as u64,
            root: root_of(&leaves),
        };
        let note = signer.sign(&cp.body()).unwrap();
        let hashes = ProofPlan::inclusion(i as u64, n as u64)
            .unwrap()
            .assemble(|node| {
                let lo = node.first_leaf() as usize;
                Some(root_of(&leaves[lo..lo + node.leaves() as usize]))
            })
            .unwrap();
        (
            records,
            signer,
            TlogProof {
                extra: None,
                index: i as u64,
                hashes,
                checkpoint: note,
            },
        )
    }

    #[test]
    fn body_format_and_parse_round_trip() {
        let cp = Checkpoint {
            origin: "atp.example/acme/crm".into(),
            size: 20852163,
            root: Digest([7; 32]),
        };
        let body = cp.body();
        assert_eq!(
            body,
            "atp.example/acme/crm\n20852163\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"
        );
        assert_eq!(Checkpoint::parse(&body).unwrap(), cp);
        assert_eq!(
            Checkpoint::parse(&format!("{body}extension line\n")).unwrap(),
            cp
        );
        assert!(Checkpoint::parse("o\n01\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n1\n").is_err());
    }

    #[test]
    fn tlog_proof_text_round_trips() {
        let (_, _, proof) = fixture(13, 5);
        let text = proof.to_text();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nindex 5\n"));
        assert_eq!(TlogProof::parse(&text).unwrap(), proof);
        let with_extra = TlogProof {
            extra: Some(b"ctx".to_vec()),
            ..proof
        };
        assert_eq!(TlogProof::parse(&with_extra.to_text()).unwrap(), with_extra);
    }

    #[test]
    fn a_record_verifies_against_its_signed_checkpoint() {
        let (records, signer, proof) = fixture(13, 5);
        let known = [signer.verifier().clone()];
        let ok = verify_record(
            &records[5],
            &partition(),
            5,
            &proof,
            &known,
            Some("atp.test"),
        )
        .unwrap();
        assert_eq!(ok.checkpoint.size, 13);
        assert_eq!(ok.signed_by.len(), 1);
        // Another record, another index, another partition, another key: all refused.
        assert!(verify_record(&records[6], &partition(), 5, &proof, &known, None).is_err());
        assert!(matches!(
            verify_record(&records[5], &partition(), 6, &proof, &known, None),
            Err(CheckpointError::IndexMismatch { .. })
        ));
        let other = PartitionKey::new(
            TenantId::new("acme").unwrap(),
            SourceId::new("erp").unwrap(),
        );
        assert!(matches!(
            verify_record(&records[5], &other, 5, &proof, &known, None),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        let stranger = NoteSigner::new("atp.test", SigningKey::from_bytes(&[1; 32])).unwrap();
        assert!(
            verify_record(
                &records[5],
                &partition(),
                5,
                &proof,
                &[stranger.verifier().clone()],
                None
            )
            .is_err()
        );
    }
}
