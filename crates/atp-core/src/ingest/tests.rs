//! Every step ingest can take, one row each: the partition before, the message, what admission
//! said of it, the step, and the partition's cursors after.

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::chain::Digest;
use crate::event::ProducerStamp;
use crate::names::{PartitionKey, SourceId, TenantId};
use crate::policy::PolicyStamp;

fn key() -> PartitionKey {
    PartitionKey::new(
        TenantId::new("acme").unwrap(),
        SourceId::new("crm").unwrap(),
    )
}

fn stamps() -> Stamps {
    let at = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    Stamps {
        record_id: "01JRECORD".to_owned(),
        received_at: at,
        committed_at: at,
        policy: PolicyStamp::default(),
        sealing: None,
    }
}

/// An event admission let through: `content` stands for everything its fingerprint covers.
fn admitted(id: &str, sequence: Option<u64>, content: &str) -> Result<Admitted, Rejection> {
    let event = json!({ "id": id, "data": content });
    Ok(Admitted {
        event: event.as_object().cloned().unwrap_or_default(),
        id: id.to_owned(),
        sequence,
        occurred_at: Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap(),
        producer: ProducerStamp {
            key_id: Some("k1".to_owned()),
            auth: "signature".to_owned(),
        },
        fingerprint: Digest::of(content.as_bytes()),
    })
}

fn refused(reason: Reason) -> Result<Admitted, Rejection> {
    Err(Rejection::new(reason, "admission refused it"))
}

/// Two records on the ledger: `e1` (producer sequence 5, ingress 3) at chain index 0 and `e2`
/// (sequence 9, ingress 4) at 1; a rejection on ATP_REJECTED for ingress 6. So: ledger cursor
/// 4, rejected cursor 6, high-water mark 9, next index 2.
fn two_records() -> Partition {
    let mut chain = PartitionState::genesis(key());
    for (id, seq, ingress) in [("e1", 5, 3), ("e2", 9, 4)] {
        let ev = admitted(id, Some(seq), id).unwrap();
        chain.append(ev, ingress, stamps()).unwrap();
    }
    Partition {
        chain: Some(chain),
        rejected_cursor: 6,
    }
}

/// A partition loaded from the ledger's tail (record 41, ingress 4, high-water mark 9) whose
/// window holds an id read back from the read model, without its content's fingerprint.
fn reloaded() -> Partition {
    let mut chain = PartitionState::resume(key(), 41, Digest::of(b"tail"), Some(9), 4);
    chain.remember(
        "old".to_owned(),
        RecordRef {
            chain_index: 17,
            record_id: "01JOLD".to_owned(),
            digest: Digest::of(b"old"),
            fingerprint: None,
        },
    );
    Partition {
        chain: Some(chain),
        rejected_cursor: 6,
    }
}

/// Nothing recorded or refused yet.
fn new_partition() -> Partition {
    Partition {
        chain: Some(PartitionState::genesis(key())),
        rejected_cursor: 0,
    }
}

/// A subject whose tokens are not a valid tenant and source, with one rejection (ingress 6).
fn unnamed() -> Partition {
    Partition {
        chain: None,
        rejected_cursor: 6,
    }
}

/// A step, as the table states it.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Skip(Handled),
    Duplicate {
        chain_index: u64,
    },
    Reject(Reason),
    Unprocessable,
    Append {
        chain_index: u64,
        seq_hwm: Option<u64>,
    },
}

fn want(step: &Step) -> Want {
    match step {
        Step::Skip(h) => Want::Skip(*h),
        Step::Duplicate(r) => Want::Duplicate {
            chain_index: r.chain_index,
        },
        Step::Reject(r) => Want::Reject(r.reason),
        Step::Unprocessable { .. } => Want::Unprocessable,
        Step::Append {
            record, seq_hwm, ..
        } => Want::Append {
            chain_index: record.link.index,
            seq_hwm: *seq_hwm,
        },
    }
}

/// The partition's ledger cursor, rejected cursor and next chain index.
type Cursors = (u64, u64, Option<u64>);

fn cursors(p: &Partition) -> Cursors {
    (
        p.ledger_cursor(),
        p.rejected_cursor,
        p.chain.as_ref().map(|c| c.next_index),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seal {
    Works,
    Fails,
}

struct Row {
    name: &'static str,
    state: fn() -> Partition,
    ingress_seq: u64,
    admission: fn() -> Result<Admitted, Rejection>,
    seal: Seal,
    want: Want,
    after: Cursors,
}

use Seal::{Fails, Works};

fn rows() -> Vec<Row> {
    vec![
        // At or below the ledger cursor: handled before a restart, whatever admission says.
        Row {
            name: "at the ledger cursor: recorded before, skipped",
            state: two_records,
            ingress_seq: 4,
            admission: || admitted("e9", None, "new"),
            seal: Works,
            want: Want::Skip(Handled::Recorded),
            after: (4, 6, Some(2)),
        },
        Row {
            name: "below the ledger cursor and refused by admission: still skipped as recorded",
            state: two_records,
            ingress_seq: 2,
            admission: || refused(Reason::Malformed),
            seal: Works,
            want: Want::Skip(Handled::Recorded),
            after: (4, 6, Some(2)),
        },
        // Appended.
        Row {
            name: "a new id above both cursors: appended at the next index",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e3", Some(10), "e3"),
            seal: Works,
            want: Want::Append {
                chain_index: 2,
                seq_hwm: Some(10),
            },
            after: (7, 6, Some(3)),
        },
        Row {
            name: "no producer sequence: appended, the high-water mark stays",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e3", None, "e3"),
            seal: Works,
            want: Want::Append {
                chain_index: 2,
                seq_hwm: Some(9),
            },
            after: (7, 6, Some(3)),
        },
        Row {
            name: "between the cursors and recorded now: appended (a crash after the rejections' \
                   commit and before the records')",
            state: two_records,
            ingress_seq: 5,
            admission: || admitted("e3", Some(10), "e3"),
            seal: Works,
            want: Want::Append {
                chain_index: 2,
                seq_hwm: Some(10),
            },
            after: (5, 6, Some(3)),
        },
        Row {
            name: "the first message of a new partition: appended at index 0",
            state: new_partition,
            ingress_seq: 1,
            admission: || admitted("e1", Some(1), "e1"),
            seal: Works,
            want: Want::Append {
                chain_index: 0,
                seq_hwm: Some(1),
            },
            after: (1, 0, Some(1)),
        },
        Row {
            name: "after a reload from the ledger's tail: appended after the tail",
            state: reloaded,
            ingress_seq: 7,
            admission: || admitted("e3", Some(10), "e3"),
            seal: Works,
            want: Want::Append {
                chain_index: 42,
                seq_hwm: Some(10),
            },
            after: (7, 6, Some(43)),
        },
        // Duplicates: answered by their record, nothing written, no cursor moves.
        Row {
            name: "a repeat of a recorded event: answered by its record",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e1", Some(5), "e1"),
            seal: Works,
            want: Want::Duplicate { chain_index: 0 },
            after: (4, 6, Some(2)),
        },
        Row {
            name: "a repeat at the rejected cursor: still answered by its record",
            state: two_records,
            ingress_seq: 6,
            admission: || admitted("e2", Some(9), "e2"),
            seal: Works,
            want: Want::Duplicate { chain_index: 1 },
            after: (4, 6, Some(2)),
        },
        Row {
            name: "a repeat of an id whose content is not known (read back from the read model): \
                   answered by its record",
            state: reloaded,
            ingress_seq: 7,
            admission: || admitted("old", None, "whatever"),
            seal: Works,
            want: Want::Duplicate { chain_index: 17 },
            after: (4, 6, Some(42)),
        },
        // Refused by the partition's state.
        Row {
            name: "a recorded id with other content: refused as a conflict",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e1", Some(11), "other content"),
            seal: Works,
            want: Want::Reject(Reason::IdempotencyConflict),
            after: (4, 7, Some(2)),
        },
        Row {
            name: "a producer sequence at the high-water mark: a regression",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e3", Some(9), "e3"),
            seal: Works,
            want: Want::Reject(Reason::SequenceRegression),
            after: (4, 7, Some(2)),
        },
        Row {
            name: "a producer sequence below the high-water mark: a regression",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e3", Some(2), "e3"),
            seal: Works,
            want: Want::Reject(Reason::SequenceRegression),
            after: (4, 7, Some(2)),
        },
        Row {
            name: "a regression at the rejected cursor: refused before, skipped",
            state: two_records,
            ingress_seq: 6,
            admission: || admitted("e3", Some(9), "e3"),
            seal: Works,
            want: Want::Skip(Handled::Refused),
            after: (4, 6, Some(2)),
        },
        Row {
            name: "a conflict below the rejected cursor: refused before, skipped",
            state: two_records,
            ingress_seq: 5,
            admission: || admitted("e1", Some(11), "other content"),
            seal: Works,
            want: Want::Skip(Handled::Refused),
            after: (4, 6, Some(2)),
        },
        // Refused by admission.
        Row {
            name: "refused by admission above the rejected cursor: rejected, the cursor moves",
            state: two_records,
            ingress_seq: 7,
            admission: || refused(Reason::PolicyDenied),
            seal: Works,
            want: Want::Reject(Reason::PolicyDenied),
            after: (4, 7, Some(2)),
        },
        Row {
            name: "refused by admission at the rejected cursor: skipped",
            state: two_records,
            ingress_seq: 6,
            admission: || refused(Reason::PolicyDenied),
            seal: Works,
            want: Want::Skip(Handled::Refused),
            after: (4, 6, Some(2)),
        },
        Row {
            name: "refused by admission between the cursors: refused before, skipped",
            state: two_records,
            ingress_seq: 5,
            admission: || refused(Reason::SignatureInvalid),
            seal: Works,
            want: Want::Skip(Handled::Refused),
            after: (4, 6, Some(2)),
        },
        // A subject that names no partition: only rejections.
        Row {
            name: "no valid partition, admitted all the same: refused as malformed",
            state: unnamed,
            ingress_seq: 7,
            admission: || admitted("e1", None, "e1"),
            seal: Works,
            want: Want::Reject(Reason::Malformed),
            after: (0, 7, None),
        },
        Row {
            name: "no valid partition, refused by admission: rejected",
            state: unnamed,
            ingress_seq: 7,
            admission: || refused(Reason::Malformed),
            seal: Works,
            want: Want::Reject(Reason::Malformed),
            after: (0, 7, None),
        },
        Row {
            name: "no valid partition, at the rejected cursor: skipped",
            state: unnamed,
            ingress_seq: 6,
            admission: || admitted("e1", None, "e1"),
            seal: Works,
            want: Want::Skip(Handled::Refused),
            after: (0, 6, None),
        },
        // ATP's own failure.
        Row {
            name: "a record that does not seal: UNPROCESSABLE, the chain stays where it was",
            state: two_records,
            ingress_seq: 7,
            admission: || admitted("e3", Some(10), "e3"),
            seal: Fails,
            want: Want::Unprocessable,
            after: (4, 7, Some(2)),
        },
        Row {
            name: "a record that does not seal, refused before: skipped",
            state: two_records,
            ingress_seq: 6,
            admission: || admitted("e3", Some(10), "e3"),
            seal: Fails,
            want: Want::Skip(Handled::Refused),
            after: (4, 6, Some(2)),
        },
    ]
}

#[test]
fn every_step_ingest_can_take() {
    for row in rows() {
        let mut p = (row.state)();
        let head = p.chain.as_ref().map(|c| c.prev_hash);
        let step = match row.seal {
            Works => p.step(row.ingress_seq, (row.admission)(), stamps),
            Fails => p.step_sealing(row.ingress_seq, (row.admission)(), |_, _| {
                Err(RecordError::Shape("injected".to_owned()))
            }),
        };
        assert_eq!(want(&step), row.want, "{}", row.name);
        assert_eq!(cursors(&p), row.after, "{}: cursors after", row.name);
        match &step {
            Step::Append {
                record, event_id, ..
            } => {
                let appended = (row.admission)().map(|ev| ev.id).unwrap();
                assert_eq!(event_id, &appended, "{}", row.name);
                assert_eq!(Some(record.link.prev_hash), head, "{}: chained", row.name);
                let chain = p.chain.as_ref().unwrap();
                assert_eq!(chain.prev_hash, record.link.chain_hash, "{}", row.name);
            }
            _ => assert_eq!(p.chain.map(|c| c.prev_hash), head, "{}: head", row.name),
        }
        if let Step::Unprocessable { rejection, defect } = &step {
            assert_eq!(rejection, &unprocessable(), "{}", row.name);
            assert!(defect.contains("injected"), "{}: {defect}", row.name);
        }
    }
}

#[test]
fn only_messages_past_the_ledger_cursor_are_admitted() {
    for (name, state, ingress_seq, needed) in [
        (
            "below the ledger cursor",
            two_records as fn() -> Partition,
            3,
            false,
        ),
        ("at the ledger cursor", two_records, 4, false),
        (
            "past the ledger cursor, below the rejected",
            two_records,
            5,
            true,
        ),
        ("past both", two_records, 7, true),
        ("a new partition", new_partition, 1, true),
        ("no valid partition", unnamed, 1, true),
    ] {
        assert_eq!(
            state().needs_admission(ingress_seq),
            needed,
            "{name} ({ingress_seq})"
        );
    }
}

#[test]
fn a_message_appended_once_is_a_duplicate_after() {
    let mut p = new_partition();
    let first = p.step(1, admitted("e1", Some(1), "e1"), stamps);
    assert!(matches!(first, Step::Append { .. }));
    let again = p.step(2, admitted("e1", Some(1), "e1"), stamps);
    assert_eq!(want(&again), Want::Duplicate { chain_index: 0 });
    assert_eq!(cursors(&p), (1, 0, Some(1)));
}
