//! Sharding: how several instances of a role split the partitions without coordinating.
//!
//! Each instance reads the whole stream and handles the partitions whose key hashes to its
//! index, so ingest and projector instances with the same `k/n` own the same partitions. Every
//! partition has exactly one owner per role; JetStream is the only thing they share.

/// A worker's share of the partitions: those whose key hashes to `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `k/n`, e.g. `0/2`.
    pub fn parse(s: &str) -> Option<Self> {
        let (k, n) = s.split_once('/')?;
        let (index, count) = (k.parse().ok()?, n.parse().ok()?);
        (count > 0 && index < count).then_some(Self { index, count })
    }

    /// FNV-1a: stable across processes and versions, which a std hasher is not.
    /// Whether this shard handles the partition whose subject tokens are `tenant` and `source`
    /// (hashed as the bytes of `tenant.source`, as in the subject, so owners never move).
    pub fn owns(&self, tenant: &str, source: &str) -> bool {
        let mut h: u32 = 0x811c_9dc5;
        let key = tenant
            .bytes()
            .chain(std::iter::once(b'.'))
            .chain(source.bytes());
        for b in key {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h % self.count == self.index
    }

    pub fn label(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_partitions_stably_and_completely() {
        let two = [Shard::parse("0/2").unwrap(), Shard::parse("1/2").unwrap()];
        for (t, s) in [
            ("acme", "crm"),
            ("acme", "billing"),
            ("globex", "crm"),
            ("initech", "hr"),
            ("a", "b"),
        ] {
            assert_eq!(two.iter().filter(|x| x.owns(t, s)).count(), 1, "{t}:{s}");
            assert!(Shard::ALL.owns(t, s));
        }
        // FNV-1a("acme.crm") = 0x414d0af1: the owner must never change between releases.
        assert!(Shard::parse("1/2").unwrap().owns("acme", "crm"));
        assert!(Shard::parse("0/3").unwrap().owns("acme", "crm"));
        assert_eq!(Shard::parse("2/2"), None);
        assert_eq!(Shard::parse("0/0"), None);
        assert_eq!(Shard::parse("1/3").unwrap().label(), "1-of-3");
    }
}
