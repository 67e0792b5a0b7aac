//! What ingest does with one ingress message of a partition: the pure half of the ingest role.
//!
//! The role reads ATP_INGRESS in order, admits each message (signature, schema, registration:
//! [`crate::event::admit`]) and asks [`Partition::step`] what follows: skip it (handled before a
//! restart), answer it with the record it repeats, refuse it, or seal it onto the chain. Reading
//! messages and writing the ledger and rejected messages stay in the role (`atp-runtime`'s
//! `ingest`); every choice between those outcomes is made here, on plain data.
//!
//! Exactly-once rests on two cursors per partition, both read back from the streams' tails when
//! the role (re)loads a partition: the highest ingress sequence whose record is on the ledger,
//! and the highest one whose rejection is on ATP_REJECTED. A message at or below the ledger
//! cursor was handled, whatever its outcome (within a batch a partition's rejections are
//! committed before its records). One at or below the rejected cursor that is refused again was
//! refused before; but one there that is now *recorded* must still be appended: a crash between
//! the two commits leaves the rejections durable and the records not.

use crate::event::Admitted;
use crate::partition::{Decision, PartitionState, RecordRef, Stamps};
use crate::reason::{Reason, Rejection};
use crate::record::{RecordError, SealedRecord};

/// What ingest knows of one partition while it walks the partition's messages.
#[derive(Debug, Clone)]
pub struct Partition {
    /// `None` for subjects whose tokens are not valid names: those only ever get rejections.
    pub chain: Option<PartitionState>,
    /// Highest ingress sequence whose rejection is on ATP_REJECTED (0 = none).
    pub rejected_cursor: u64,
}

/// What ingest does with one message.
#[derive(Debug)]
pub enum Step {
    /// Handled before this reading: nothing to write.
    Skip(Handled),
    /// The id is on the partition's chain with the same content: the message is answered by
    /// that record and nothing is written.
    Duplicate(RecordRef),
    /// Refused: a rejection to write. The rejected cursor is at this message now.
    Reject(Rejection),
    /// ATP failed on this message (a defect in ATP, not the producer's doing): refused as
    /// `UNPROCESSABLE` like [`Step::Reject`]; `defect` is for the operators' log, never for the
    /// rejection the producer reads.
    Unprocessable {
        rejection: Rejection,
        defect: String,
    },
    /// Sealed at the partition's next chain position: a record to write. The chain (head,
    /// producer-sequence high-water mark, recent ids) and the ledger cursor have moved on as if
    /// it were committed; if the commit fails the role reloads the partition from the ledger.
    Append {
        record: SealedRecord,
        /// The event's id, which its ledger message carries as a header (so that tails can be
        /// read without parsing).
        event_id: String,
        /// The partition's producer-sequence high-water mark with this record, which its ledger
        /// message carries so that a reload finds it on the tail.
        seq_hwm: Option<u64>,
    },
}

/// Which cursor says a message was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// At or below the ledger cursor: its record, or its rejection, is durable.
    Recorded,
    /// Refused again at or below the rejected cursor: its rejection is durable.
    Refused,
}

/// The rejection for a message ATP itself failed on. It says nothing of the defect: that is
/// for ATP's operators, and the submission is kept on ATP_REJECTED for them.
pub fn unprocessable() -> Rejection {
    Rejection::new(
        Reason::Unprocessable,
        "ATP failed on this submission (a defect in ATP, reported to its operators); \
         it is kept here and nothing else was affected",
    )
}

impl Partition {
    /// Highest ingress sequence whose record is on the ledger (0 = none).
    pub fn ledger_cursor(&self) -> u64 {
        self.chain.as_ref().map_or(0, |c| c.ledger_cursor)
    }

    /// Whether the message at `ingress_seq` is worth admitting: not when it was handled before,
    /// so a re-read after a restart pays for no signature check. [`Partition::step`] asks the
    /// same again, so skipping admission here is only ever an optimisation.
    pub fn needs_admission(&self, ingress_seq: u64) -> bool {
        ingress_seq > self.ledger_cursor()
    }

    /// Decides the message at `ingress_seq`, given what admission said of it, and moves the
    /// partition on accordingly. `stamps` (the record id and clock readings, which stay outside
    /// the core) is called only for a message that is appended.
    ///
    /// Messages must come in ingress order; every message gets exactly one step, and nothing
    /// a message holds makes this fail.
    pub fn step(
        &mut self,
        ingress_seq: u64,
        admission: Result<Admitted, Rejection>,
        stamps: impl FnOnce() -> Stamps,
    ) -> Step {
        self.step_sealing(ingress_seq, admission, |chain, ev| {
            chain.append(ev, ingress_seq, stamps())
        })
    }

    /// [`Partition::step`] with the sealing passed in, so that a test can make it fail (no event
    /// that passed admission makes a record that cannot be sealed).
    fn step_sealing(
        &mut self,
        ingress_seq: u64,
        admission: Result<Admitted, Rejection>,
        seal: impl FnOnce(&mut PartitionState, Admitted) -> Result<SealedRecord, RecordError>,
    ) -> Step {
        if !self.needs_admission(ingress_seq) {
            return Step::Skip(Handled::Recorded);
        }
        let refusal = match (admission, self.chain.as_mut()) {
            (Err(rejection), _) => Step::Reject(rejection),
            (Ok(_), None) => Step::Reject(Rejection::new(Reason::Malformed, "invalid partition")),
            (Ok(ev), Some(chain)) => match chain.decide(&ev) {
                Decision::Duplicate(r) => return Step::Duplicate(r),
                Decision::Reject(rejection) => Step::Reject(rejection),
                Decision::Append => {
                    let event_id = ev.id.clone();
                    match seal(chain, ev) {
                        Ok(record) => {
                            return Step::Append {
                                record,
                                event_id,
                                seq_hwm: chain.seq_hwm,
                            };
                        }
                        Err(e) => Step::Unprocessable {
                            rejection: unprocessable(),
                            defect: format!("cannot seal a record: {e}"),
                        },
                    }
                }
            },
        };
        if ingress_seq <= self.rejected_cursor {
            return Step::Skip(Handled::Refused);
        }
        self.rejected_cursor = ingress_seq;
        refusal
    }
}

#[cfg(test)]
mod tests;
