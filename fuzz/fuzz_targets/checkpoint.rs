//! Fuzzes the text formats of the integrity layer: C2SP signed notes, verifier keys,
//! `tlog-checkpoint` bodies and `tlog-proof@v1`, and the inclusion and consistency checks a
//! parsed proof feeds, with attacker-chosen indices, sizes and hash counts. What parses must
//! print back to the same text (or value); nothing may panic or overflow.
#![no_main]

use atp_core::checkpoint::{self, Checkpoint, TlogProof};
use atp_core::merkle;
use atp_core::note::{self, NoteSigner, Verifier};
use atp_core::{Digest, names::PartitionKey};
use atp_fuzz::{LOG_NAME, log_key, partition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (Ok(signer), Some(partition)) = (NoteSigner::new(LOG_NAME, log_key()), partition()) else {
        return;
    };
    let known = [signer.verifier().clone()];

    if let Ok(v) = Verifier::parse(text) {
        assert_eq!(Verifier::parse(&v.encode()).ok(), Some(v));
    }
    if let Ok(c) = Checkpoint::parse(text) {
        assert_eq!(Checkpoint::parse(&c.body()).ok(), Some(c));
    }
    note_round_trip(text);
    if let Ok(opened) = note::open(text, &known) {
        assert!(opened.verified.len() + opened.unknown.len() > 0);
    }
    let _ = Checkpoint::open(text, &known);

    if let Ok(proof) = TlogProof::parse(text) {
        assert_eq!(TlogProof::parse(&proof.to_text()).ok(), Some(proof.clone()));
        proofs(&proof, &partition, &known);
    }
});

/// A note that splits prints back byte for byte from its parts.
fn note_round_trip(text: &str) {
    let Ok((body, sigs)) = note::split(text) else {
        return;
    };
    let mut again = format!("{body}\n");
    for s in &sigs {
        again.push_str(&note::format_signature_line(
            &s.name,
            s.key_id,
            &s.signature,
        ));
    }
    assert_eq!(again, text);
}

/// Runs the checks a parsed proof reaches, with whatever sizes its checkpoint claims, signed
/// or not: the arithmetic must hold for any index, size and number of hashes.
fn proofs(proof: &TlogProof, partition: &PartitionKey, known: &[Verifier]) {
    let record = b"{}";
    let _ = checkpoint::verify_record(record, partition, proof.index, proof, known, None);
    let size = note::split(&proof.checkpoint)
        .ok()
        .and_then(|(body, _)| Checkpoint::parse(body).ok())
        .map_or(proof.index.wrapping_add(1), |c| c.size);
    let leaf = merkle::leaf_hash(record);
    let root = Digest([0; 32]);
    let _ = merkle::verify_inclusion(proof.index, size, &leaf, &proof.hashes, &root);
    let _ = merkle::verify_consistency(proof.index, size, &root, &root, &proof.hashes);
    let _ = merkle::ProofPlan::inclusion(proof.index, size).map(|p| p.nodes().len());
    let _ = merkle::ProofPlan::consistency(proof.index, size).map(|p| p.nodes().len());
}
