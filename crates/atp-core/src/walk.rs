//! Walking a partition's ledger: every record must continue the linear chain, and each one
//! becomes the next leaf of the partition's Merkle log. The integrity worker, `atp verify
//! chain` and offline verification all walk with this one type, so they agree on what a gap,
//! a reorder or a broken link is.

use crate::chain::{ChainLink, Digest, chain_hash, genesis};
use crate::merkle::leaf_hash;
use crate::names::PartitionKey;
use crate::record;
use crate::tiles::TileLog;

/// What a walk found wrong, at which chain index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("gap: chain index {found} where {expected} was expected")]
    Gap { expected: u64, found: u64 },
    #[error("reorder: chain index {found} again or out of order where {expected} was expected")]
    Reorder { expected: u64, found: u64 },
    #[error(
        "chain broken at index {index}: its prevHash does not match the chain hash of record {} (altered bytes)",
        .index.saturating_sub(1)
    )]
    ChainBroken { index: u64 },
    #[error("record {index} names partition {found}, not this one")]
    WrongPartition { index: u64, found: String },
    #[error("the message at chain position {index} is not a record: {detail}")]
    Malformed { index: u64, detail: String },
}

impl Finding {
    /// A stable code for alerts and reports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Gap { .. } => "GAP",
            Self::Reorder { .. } => "REORDER",
            Self::ChainBroken { .. } => "CHAIN_BROKEN",
            Self::WrongPartition { .. } => "WRONG_PARTITION",
            Self::Malformed { .. } => "MALFORMED",
        }
    }
    /// The chain index the finding is about (where the next record was expected).
    pub fn index(&self) -> u64 {
        match self {
            Self::Gap { expected, .. } | Self::Reorder { expected, .. } => *expected,
            Self::ChainBroken { index }
            | Self::WrongPartition { index, .. }
            | Self::Malformed { index, .. } => *index,
        }
    }
}

/// A partition's chain and Merkle log, grown one record at a time.
#[derive(Debug, Clone)]
pub struct ChainWalk {
    partition: PartitionKey,
    prev: Digest,
    log: TileLog,
}

impl ChainWalk {
    pub fn new(partition: PartitionKey) -> Self {
        Self {
            prev: genesis(&partition),
            partition,
            log: TileLog::new(),
        }
    }

    /// Continues a walk from stored state: the log of `log.size()` records whose last chain
    /// hash is `chain_hash`.
    pub fn resume(partition: PartitionKey, chain_hash: Digest, log: TileLog) -> Self {
        Self {
            partition,
            prev: chain_hash,
            log,
        }
    }

    /// Checks the next record's bytes and appends them as the next leaf.
    pub fn push(&mut self, bytes: &[u8]) -> Result<ChainLink, Finding> {
        let expected = self.log.size();
        let (head, link) = record::head(bytes).map_err(|e| Finding::Malformed {
            index: expected,
            detail: e.to_string(),
        })?;
        if head.tenant_id != self.partition.tenant.as_str()
            || head.source_id != self.partition.source.as_str()
        {
            return Err(Finding::WrongPartition {
                index: expected,
                found: format!("{}:{}", head.tenant_id, head.source_id),
            });
        }
        match head.chain_index {
            i if i > expected => {
                return Err(Finding::Gap { expected, found: i });
            }
            i if i < expected => {
                return Err(Finding::Reorder { expected, found: i });
            }
            _ => {}
        }
        if link.prev_hash != self.prev {
            return Err(Finding::ChainBroken { index: expected });
        }
        debug_assert_eq!(link.chain_hash, chain_hash(&link.prev_hash, &link.digest));
        self.prev = link.chain_hash;
        self.log.push(leaf_hash(bytes));
        Ok(link)
    }

    pub fn partition(&self) -> &PartitionKey {
        &self.partition
    }
    pub fn size(&self) -> u64 {
        self.log.size()
    }
    pub fn root(&self) -> Digest {
        self.log.root()
    }
    pub fn chain_hash(&self) -> Digest {
        self.prev
    }
    pub fn log_mut(&mut self) -> &mut TileLog {
        &mut self.log
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::merkle::root_of;
    use crate::names::{SourceId, TenantId};
    use crate::policy::PolicyStamp;
    use crate::record::{Record, SCHEMA_VERSION};

    fn p() -> PartitionKey {
        PartitionKey::new(
            TenantId::new("acme").unwrap(),
            SourceId::new("crm").unwrap(),
        )
    }

    /// A valid chain of `n` records' canonical bytes.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = genesis(&p());
        (0..n)
            .map(|i| {
                let r = Record {
                    schema_version: SCHEMA_VERSION.to_owned(),
                    record_id: format!("01JD{i:022}"),
                    tenant_id: "acme".into(),
                    source_id: "crm".into(),
                    chain_index: i,
                    prev_hash: prev,
                    received_at: "2026-11-23T10:00:00.000000Z".into(),
                    committed_at: "2026-11-23T10:00:00.000000Z".into(),
                    policy: PolicyStamp::default(),
                    producer: crate::event::ProducerStamp {
                        key_id: None,
                        auth: "test".into(),
                    },
                    event: serde_json::json!({"id": format!("e{i}")}),
                };
                let sealed = r.seal().unwrap();
                prev = sealed.link.chain_hash;
                sealed.bytes
            })
            .collect()
    }

    fn walk(records: &[Vec<u8>]) -> Result<ChainWalk, Finding> {
        let mut w = ChainWalk::new(p());
        for r in records {
            w.push(r)?;
        }
        Ok(w)
    }

    #[test]
    fn a_valid_chain_walks_and_its_root_is_the_merkle_root_of_its_records() {
        let records = chain(40);
        let w = walk(&records).unwrap();
        assert_eq!(w.size(), 40);
        let leaves: Vec<_> = records.iter().map(|r| leaf_hash(r)).collect();
        assert_eq!(w.root(), root_of(&leaves));
    }

    #[test]
    fn findings_name_what_went_wrong_and_where() {
        let records = chain(5);
        let mut gap = records.clone();
        gap.remove(2);
        assert_eq!(
            walk(&gap).unwrap_err(),
            Finding::Gap {
                expected: 2,
                found: 3
            }
        );
        let mut reorder = records.clone();
        reorder.swap(1, 2);
        assert_eq!(walk(&reorder).unwrap_err().code(), "GAP");
        let mut dup = records.clone();
        dup.insert(3, records[2].clone());
        assert_eq!(
            walk(&dup).unwrap_err(),
            Finding::Reorder {
                expected: 3,
                found: 2
            }
        );
        let mut altered = records.clone();
        altered[1] = String::from_utf8(altered[1].clone())
            .unwrap()
            .replace("\"e1\"", "\"eX\"")
            .into_bytes();
        assert_eq!(
            walk(&altered).unwrap_err(),
            Finding::ChainBroken { index: 2 }
        );
        let mut junk = records;
        junk[4] = b"not json".to_vec();
        assert_eq!(walk(&junk).unwrap_err().code(), "MALFORMED");
    }

    proptest! {
        /// Any single modification, insertion, deletion or swap of records fails the walk, or,
        /// for a change to the last record only, changes the root the walk arrives at.
        #[test]
        fn any_tampering_is_detected(n in 3u64..24, kind in 0u8..4, at in any::<u64>(), byte in any::<u8>()) {
            let records = chain(n);
            let honest = walk(&records).unwrap().root();
            let i = (at % n) as usize;
            let mut t = records.clone();
            match kind {
                0 => {
                    // Flip one byte of one record.
                    let pos = (byte as usize * 7919) % t[i].len();
                    t[i][pos] ^= 0x20;
                }
                1 => t.insert(i, records[(i + 1) % n as usize].clone()),
                2 => { t.remove(i); }
                _ => t.swap(i, (i + 1) % n as usize),
            }
            prop_assume!(t != records);
            match walk(&t) {
                Err(_) => {}
                Ok(w) => prop_assert!(w.root() != honest || w.size() != n, "tampering went unnoticed"),
            }
        }
    }
}
