//! One partition's ingest state, as the ingest worker holds it between batches.
//!
//! Everything here is derivable from the ledger: the head (next index, prevHash) from its last
//! record, the producer-sequence high-water mark and the ingress cursor from that message's
//! headers. The recent-id window is a cache over the partition's tail. If the worker dies the
//! state is rebuilt from the ledger; nothing is kept elsewhere that could disagree with it.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use crate::chain::{Digest, genesis};
use crate::event::Admitted;
use crate::names::PartitionKey;
use crate::policy::PolicyStamp;
use crate::reason::{Reason, Rejection};
use crate::record::{Record, RecordError, SCHEMA_VERSION, SealedRecord, timestamp};

/// How many recent event ids a partition remembers for duplicate answers. At the spine's rate
/// (20k events/s over a few hundred partitions) this covers minutes per partition while costing
/// about 100 bytes per id.
pub const RECENT_IDS: usize = 16_384;

/// Where an accepted event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub chain_index: u64,
    pub record_id: String,
    pub digest: Digest,
    /// The recorded event's [`crate::event::fingerprint`], when known: a repeat of the id with
    /// another fingerprint is refused, not answered with this record.
    pub fingerprint: Option<Digest>,
}

#[derive(Debug, Clone)]
pub struct PartitionState {
    pub key: PartitionKey,
    /// chainIndex the next record gets.
    pub next_index: u64,
    /// prevHash the next record gets (chainHash of the last one).
    pub prev_hash: Digest,
    /// Highest producer `sequence` accepted so far.
    pub seq_hwm: Option<u64>,
    /// Highest ATP_INGRESS sequence whose record is on the ledger.
    pub ledger_cursor: u64,
    recent: HashMap<String, RecordRef>,
    recent_order: VecDeque<String>,
}

/// What to do with an admitted event, decided before it gets a chain position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Append,
    /// The idempotency key was seen: answer the existing record, append nothing.
    Duplicate(RecordRef),
    Reject(Rejection),
}

/// Stamps the shell supplies: the clock and the id generator stay outside the core.
#[derive(Debug, Clone)]
pub struct Stamps {
    pub record_id: String,
    pub received_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    pub policy: PolicyStamp,
    /// The values to seal before hashing, when the policy classifies any `personal` or
    /// `sensitive` (CONTRACT §8).
    pub sealing: Option<crate::privacy::Sealing>,
}

impl PartitionState {
    pub fn genesis(key: PartitionKey) -> Self {
        let prev_hash = genesis(&key);
        Self {
            key,
            next_index: 0,
            prev_hash,
            seq_hwm: None,
            ledger_cursor: 0,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        }
    }

    /// State after the record with `chain_hash` at `last_index` (read from the ledger's tail).
    pub fn resume(
        key: PartitionKey,
        last_index: u64,
        chain_hash: Digest,
        seq_hwm: Option<u64>,
        ledger_cursor: u64,
    ) -> Self {
        Self {
            next_index: last_index + 1,
            prev_hash: chain_hash,
            seq_hwm,
            ledger_cursor,
            ..Self::genesis(key)
        }
    }

    pub fn remember(&mut self, event_id: String, r: RecordRef) {
        if self.recent.insert(event_id.clone(), r).is_none() {
            self.recent_order.push_back(event_id);
            if self.recent_order.len() > RECENT_IDS
                && let Some(old) = self.recent_order.pop_front()
            {
                self.recent.remove(&old);
            }
        }
    }

    pub fn recent(&self, event_id: &str) -> Option<&RecordRef> {
        self.recent.get(event_id)
    }

    /// True when every record of the partition is in the recent-id window (a young partition,
    /// or one whose whole history was read back): then no older duplicate can exist elsewhere.
    pub fn knows_every_id(&self) -> bool {
        self.recent.len() as u64 == self.next_index
    }

    /// Duplicate, conflict, regression or append. A repeat of the same event (same id, same
    /// fingerprint) is never a regression.
    pub fn decide(&self, ev: &Admitted) -> Decision {
        if let Some(r) = self.recent.get(&ev.id) {
            if r.fingerprint.is_some_and(|f| f != ev.fingerprint) {
                return Decision::Reject(crate::event::idempotency_conflict(
                    &ev.id,
                    r.chain_index,
                    &r.record_id,
                ));
            }
            return Decision::Duplicate(r.clone());
        }
        match (ev.sequence, self.seq_hwm) {
            (Some(seq), Some(hwm)) if seq <= hwm => Decision::Reject(Rejection::new(
                Reason::SequenceRegression,
                format!("sequence {seq} is not above the partition's high-water mark {hwm}"),
            )),
            _ => Decision::Append,
        }
    }

    /// Gives the event the next chain position and seals it. The state moves on as if the
    /// record were committed; if the append then fails the caller reloads state from the ledger.
    pub fn append(
        &mut self,
        ev: Admitted,
        ingress_seq: u64,
        stamps: Stamps,
    ) -> Result<SealedRecord, RecordError> {
        let mut ev = ev;
        if let Some(sealing) = &stamps.sealing {
            crate::privacy::seal_event(
                &mut ev.event,
                self.key.tenant.as_str(),
                self.key.source.as_str(),
                &stamps.record_id,
                sealing,
            )
            .map_err(|e| RecordError::Shape(e.to_string()))?;
        }
        let record = Record {
            schema_version: SCHEMA_VERSION.to_owned(),
            record_id: stamps.record_id,
            tenant_id: self.key.tenant.to_string(),
            source_id: self.key.source.to_string(),
            chain_index: self.next_index,
            prev_hash: self.prev_hash,
            received_at: timestamp(stamps.received_at),
            committed_at: timestamp(stamps.committed_at),
            policy: stamps.policy,
            producer: ev.producer,
            event: serde_json::Value::Object(ev.event),
        };
        let sealed = record.seal()?;
        self.next_index += 1;
        self.prev_hash = sealed.link.chain_hash;
        if let Some(seq) = ev.sequence {
            self.seq_hwm = Some(self.seq_hwm.map_or(seq, |h| h.max(seq)));
        }
        self.ledger_cursor = self.ledger_cursor.max(ingress_seq);
        self.remember(
            ev.id,
            RecordRef {
                chain_index: sealed.link.index,
                record_id: sealed.record_id.clone(),
                digest: sealed.link.digest,
                fingerprint: Some(ev.fingerprint),
            },
        );
        Ok(sealed)
    }
}
