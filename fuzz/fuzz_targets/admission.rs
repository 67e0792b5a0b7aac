//! Fuzzes admission: any body, any header pairs (both modes, repeats, any case, control
//! characters), through either channel, against the fixed `acme/crm` registration. Beyond "no
//! panic" it checks what the contract promises of every outcome: a rejection carries a
//! contract reason and fits ATP_REJECTED; an admitted event has a storable id and, planned into
//! a partition, becomes exactly one record that a repeat never duplicates.
#![no_main]

use atp_core::chain::ChainVerifier;
use atp_core::event::{self, MAX_ID_LEN};
use atp_core::partition::{Decision, PartitionState, Stamps};
use atp_core::policy::PolicyStamp;
use atp_core::reason::{MAX_ENVELOPE_BYTES, Reason, RefusalFacts, RejectionEnvelope};
use atp_core::record;
use atp_fuzz::{AdmissionInput, flags, partition, registration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = AdmissionInput::decode(data);
    let (Some(partition), Some(reg)) = (
        partition(),
        registration(input.flags & flags::ALLOW_UNSIGNED != 0),
    ) else {
        return;
    };
    let reg = (input.flags & flags::UNREGISTERED == 0).then_some(&reg);
    let sub = input.submission();
    match event::admit(&partition, &sub, reg) {
        Ok(admitted) => {
            assert!(sub.repeated.is_empty(), "admitted with repeated headers");
            assert!(
                admitted.id.len() <= MAX_ID_LEN,
                "id of {} bytes",
                admitted.id.len()
            );
            assert!(!admitted.id.chars().any(char::is_control), "control in id");
            // Planning: a new partition appends it once; the same event again is a duplicate.
            let mut state = PartitionState::genesis(partition.clone());
            assert_eq!(state.decide(&admitted), Decision::Append);
            let stamps = Stamps {
                record_id: "01JDFUZZ0000000000000000000".to_owned(),
                received_at: chrono::DateTime::UNIX_EPOCH,
                committed_at: chrono::DateTime::UNIX_EPOCH,
                policy: PolicyStamp::default(),
                sealing: None,
            };
            let sealed = match state.append(admitted.clone(), 1, stamps) {
                Ok(s) => s,
                Err(e) => panic!("an admitted event could not be sealed: {e}"),
            };
            assert!(
                matches!(state.decide(&admitted), Decision::Duplicate(r) if r.chain_index == 0),
                "a repeat was not answered with its record"
            );
            // The record's bytes are canonical and chain from genesis.
            let opened = match record::open(&sealed.bytes, true) {
                Ok(o) => o,
                Err(e) => panic!("a sealed record does not open: {e}"),
            };
            let mut chain = ChainVerifier::new(&partition);
            assert!(
                chain
                    .push(opened.link.index, opened.link.prev_hash, opened.link.digest)
                    .is_ok()
            );
        }
        Err(rejection) => {
            assert!(Reason::ALL.contains(&rejection.reason));
            if !sub.repeated.is_empty() {
                assert!(
                    matches!(rejection.reason, Reason::Malformed | Reason::TooLarge),
                    "repeated headers refused as {}",
                    rejection.reason
                );
            }
            let facts = RefusalFacts {
                rejection,
                ingress_seq: 1,
                tenant_id: "acme".to_owned(),
                source_id: "crm".to_owned(),
                received_at: "2026-01-01T00:00:00Z".to_owned(),
                rejected_at: "2026-01-01T00:00:00Z".to_owned(),
                event_id: sub
                    .ce_headers
                    .iter()
                    .find(|(n, _)| n == "id")
                    .map(|(_, v)| v.clone()),
            };
            let (envelope, bytes) = RejectionEnvelope::bounded(facts, &input.body);
            assert!(
                bytes.len() <= MAX_ENVELOPE_BYTES,
                "envelope of {} bytes",
                bytes.len()
            );
            assert_eq!(envelope.event_bytes, Some(input.body.len() as u64));
            let back: RejectionEnvelope = match serde_json::from_slice(&bytes) {
                Ok(b) => b,
                Err(e) => panic!("an envelope does not read back: {e}"),
            };
            assert_eq!(back, envelope);
        }
    }
});
