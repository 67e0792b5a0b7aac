//! Digests and the linear hash chain (CONTRACT §3).
//!
//! `digest = SHA-256(record bytes)`; `chainHash_i = SHA-256(prevHash_i || digest_i)` over the
//! raw 32-byte values; `prevHash_0 = SHA-256("atp:chain:v1:" || tenantId || ":" || sourceId)`.
//! Hashes are always taken over stored canonical bytes, never over a re-serialised struct.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::names::PartitionKey;

/// A SHA-256 value, written `sha256:<64 lowercase hex>` on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected sha256:<64 lowercase hex>, got {0:?}")]
pub struct DigestParseError(String);

/// Stored bytes that are not a SHA-256 value (a read model row that is not what ATP wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a SHA-256 value is 32 bytes, not {0}")]
pub struct DigestLengthError(pub usize);

impl TryFrom<Vec<u8>> for Digest {
    type Error = DigestLengthError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, Self::Error> {
        let len = bytes.len();
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| DigestLengthError(len))
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestParseError(s.chars().take(80).collect());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(err)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `prevHash_0` of a partition's chain.
pub fn genesis(partition: &PartitionKey) -> Digest {
    let mut h = Sha256::new();
    h.update(b"atp:chain:v1:");
    h.update(partition.tenant.as_str().as_bytes());
    h.update(b":");
    h.update(partition.source.as_str().as_bytes());
    Digest(h.finalize().into())
}

/// `chainHash = SHA-256(prevHash || digest)`.
pub fn chain_hash(prev: &Digest, digest: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(prev.0);
    h.update(digest.0);
    Digest(h.finalize().into())
}

/// One verified link of a chain: where a record sits and what it commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    pub index: u64,
    pub prev_hash: Digest,
    pub digest: Digest,
    pub chain_hash: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("chain index {found} where {expected} was expected")]
    Gap { expected: u64, found: u64 },
    #[error("record {index}: prevHash {found} does not continue the chain (expected {expected})")]
    Broken {
        index: u64,
        expected: Digest,
        found: Digest,
    },
}

/// Streaming chain verifier: feed links in order; any gap, reorder or altered link fails.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_index: u64,
    prev: Digest,
}

impl ChainVerifier {
    pub fn new(partition: &PartitionKey) -> Self {
        Self {
            next_index: 0,
            prev: genesis(partition),
        }
    }
    /// Checks the next record (its declared index and prevHash, and its digest) and returns its link.
    pub fn push(
        &mut self,
        index: u64,
        prev_hash: Digest,
        digest: Digest,
    ) -> Result<ChainLink, ChainError> {
        if index != self.next_index {
            return Err(ChainError::Gap {
                expected: self.next_index,
                found: index,
            });
        }
        if prev_hash != self.prev {
            return Err(ChainError::Broken {
                index,
                expected: self.prev,
                found: prev_hash,
            });
        }
        let link = ChainLink {
            index,
            prev_hash,
            digest,
            chain_hash: chain_hash(&prev_hash, &digest),
        };
        self.prev = link.chain_hash;
        self.next_index += 1;
        Ok(link)
    }
    pub fn len(&self) -> u64 {
        self.next_index
    }
    pub fn is_empty(&self) -> bool {
        self.next_index == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{SourceId, TenantId};

    #[test]
    fn stored_bytes_are_a_digest_only_at_32() {
        let d = Digest::of(b"x");
        assert_eq!(Digest::try_from(d.0.to_vec()), Ok(d));
        assert_eq!(Digest::try_from(vec![0u8; 31]), Err(DigestLengthError(31)));
        assert_eq!(Digest::try_from(Vec::new()), Err(DigestLengthError(0)));
    }

    fn p() -> PartitionKey {
        PartitionKey::new(
            TenantId::new("acme").unwrap(),
            SourceId::new("crm").unwrap(),
        )
    }

    #[test]
    fn digest_matches_sha256sum_and_round_trips() {
        // `printf 'abc' | sha256sum`
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!(
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
                .parse::<Digest>()
                .is_err()
        );
        assert!("sha1:abc".parse::<Digest>().is_err());
    }

    #[test]
    fn genesis_is_sha256_of_the_prefixed_partition() {
        // `printf 'atp:chain:v1:acme:crm' | sha256sum`
        assert_eq!(genesis(&p()), Digest::of(b"atp:chain:v1:acme:crm"));
    }

    #[test]
    fn chain_hash_is_over_raw_bytes() {
        let prev = Digest::of(b"a");
        let d = Digest::of(b"b");
        let mut cat = Vec::new();
        cat.extend_from_slice(&prev.0);
        cat.extend_from_slice(&d.0);
        assert_eq!(chain_hash(&prev, &d), Digest::of(&cat));
    }

    #[test]
    fn verifier_rejects_gaps_and_broken_links() {
        let mut v = ChainVerifier::new(&p());
        let l0 = v.push(0, genesis(&p()), Digest::of(b"r0")).unwrap();
        assert!(matches!(
            v.push(2, l0.chain_hash, Digest::of(b"r2")),
            Err(ChainError::Gap {
                expected: 1,
                found: 2
            })
        ));
        assert!(matches!(
            v.push(1, genesis(&p()), Digest::of(b"r1")),
            Err(ChainError::Broken { .. })
        ));
        v.push(1, l0.chain_hash, Digest::of(b"r1")).unwrap();
        assert_eq!(v.len(), 2);
    }
}
