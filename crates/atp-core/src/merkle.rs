//! The RFC 6962 / RFC 9162 Merkle log of a partition (CONTRACT §3).
//!
//! Leaf `i` is the record with `chainIndex = i`; `leaf hash = SHA-256(0x00 || record bytes)`,
//! interior nodes `SHA-256(0x01 || left || right)`. Proofs are computed in two pure steps so
//! that storage stays outside this crate: a [`ProofPlan`] names the complete subtrees
//! ([`Node`]s) whose hashes a proof needs — O(log n) of them — and, once the caller has looked
//! those up (from tiles, see [`crate::tiles`]), assembles the proof. Verification follows
//! RFC 9162 §2.1.3.2 and §2.1.4.2 and needs nothing but the proof.

use sha2::{Digest as _, Sha256};

use crate::chain::Digest;

/// `SHA-256(0x00 || bytes)`: the hash of a leaf (a record's canonical bytes).
pub fn leaf_hash(bytes: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(bytes);
    Digest(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`: an interior node.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Digest(h.finalize().into())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Digest {
    Digest::of(b"")
}

/// A complete subtree: `level` ℓ and `index` k cover leaves `[k·2^ℓ, (k+1)·2^ℓ)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub level: u8,
    pub index: u64,
}

impl Node {
    pub fn first_leaf(self) -> u64 {
        self.index << self.level
    }
    pub fn leaves(self) -> u64 {
        1 << self.level
    }
}

/// The maximal complete subtrees covering leaves `[lo, hi)`, left to right.
pub fn decompose(mut lo: u64, hi: u64) -> Vec<Node> {
    let mut nodes = Vec::new();
    while lo < hi {
        // The largest aligned power of two starting at `lo` that still fits.
        let mut level = if lo == 0 { 63 } else { lo.trailing_zeros() };
        while level > 0 && (1u64 << level) > hi - lo {
            level -= 1;
        }
        nodes.push(Node {
            level: level as u8,
            index: lo >> level,
        });
        lo += 1 << level;
    }
    nodes
}

/// RFC 6962 `MTH` of a range given the hashes of its [`decompose`]d subtrees, left to right.
pub fn fold_range(subtrees: &[Digest]) -> Option<Digest> {
    let (last, rest) = subtrees.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc)))
}

/// RFC 6962 `MTH` over leaf hashes: the reference definition, for tests and small trees.
pub fn root_of(leaves: &[Digest]) -> Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The root of a perfect subtree whose bottom row is `row` (a power-of-two count of hashes).
pub fn perfect_root(row: &[Digest]) -> Digest {
    debug_assert!(row.len().is_power_of_two());
    let mut level: Vec<Digest> = row.to_vec();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|p| node_hash(&p[0], &p[1]))
            .collect();
    }
    level[0]
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("cannot prove consistency from size {old} to size {new}")]
    BadSizes { old: u64, new: u64 },
    #[error("the hash of subtree (level {}, index {}) is not available", .0.level, .0.index)]
    Missing(Node),
    #[error("inclusion proof does not lead to the checkpoint's root")]
    InclusionMismatch,
    #[error("consistency proof does not join the two roots")]
    ConsistencyMismatch,
    #[error("proof has the wrong number of hashes for its sizes")]
    WrongLength,
}

/// What a proof is made of: each element is the `MTH` of one leaf range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofPlan {
    ranges: Vec<(u64, u64)>,
}

impl ProofPlan {
    /// RFC 9162 §2.1.3.1 `PATH(m, D[n])`, ordered from the leaf's sibling up to the root's child.
    pub fn inclusion(index: u64, size: u64) -> Result<Self, ProofError> {
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut ranges = Vec::new();
        let (mut lo, mut hi) = (0, size);
        // Walk down from the root; siblings are found top-down and reversed at the end.
        while hi - lo > 1 {
            let k = largest_power_of_two_below(hi - lo);
            if index < lo + k {
                ranges.push((lo + k, hi));
                hi = lo + k;
            } else {
                ranges.push((lo, lo + k));
                lo += k;
            }
        }
        ranges.reverse();
        Ok(Self { ranges })
    }

    /// RFC 9162 §2.1.4.1 `PROOF(m, D[n])` for `0 < old ≤ new`.
    pub fn consistency(old: u64, new: u64) -> Result<Self, ProofError> {
        if old == 0 || old > new {
            return Err(ProofError::BadSizes { old, new });
        }
        let mut ranges = Vec::new();
        let (mut lo, mut hi, mut m, mut complete) = (0, new, old, true);
        while m != hi - lo {
            let k = largest_power_of_two_below(hi - lo);
            if m <= k {
                ranges.push((lo + k, hi));
                hi = lo + k;
            } else {
                ranges.push((lo, lo + k));
                lo += k;
                m -= k;
                complete = false;
            }
        }
        if !complete {
            ranges.push((lo, hi));
        }
        ranges.reverse();
        Ok(Self { ranges })
    }

    /// The whole tree of `size` leaves: one element, its root.
    pub fn root(size: u64) -> Self {
        Self {
            ranges: if size == 0 { vec![] } else { vec![(0, size)] },
        }
    }

    /// Every subtree whose hash the proof needs, without repeats.
    pub fn nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .ranges
            .iter()
            .flat_map(|&(lo, hi)| decompose(lo, hi))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Builds the proof from the hashes of [`Self::nodes`].
    pub fn assemble(
        &self,
        mut lookup: impl FnMut(Node) -> Option<Digest>,
    ) -> Result<Vec<Digest>, ProofError> {
        self.ranges
            .iter()
            .map(|&(lo, hi)| {
                let hashes = decompose(lo, hi)
                    .into_iter()
                    .map(|n| lookup(n).ok_or(ProofError::Missing(n)))
                    .collect::<Result<Vec<_>, _>>()?;
                fold_range(&hashes).ok_or(ProofError::WrongLength)
            })
            .collect()
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `index` (hash `leaf`) in the tree `(size, root)`?
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Digest,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::InclusionMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree `(new, new_root)` extends `(old, old_root)`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::BadSizes { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::ConsistencyMismatch)
        };
    }
    let mut path: Vec<Digest> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::ConsistencyMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: u64) -> Vec<Digest> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Looks nodes up by computing them from the leaves (the reference `MTH`).
    fn lookup(all: &[Digest]) -> impl FnMut(Node) -> Option<Digest> + '_ {
        |n: Node| {
            let lo = n.first_leaf() as usize;
            let hi = lo + n.leaves() as usize;
            (hi <= all.len()).then(|| root_of(&all[lo..hi]))
        }
    }

    #[test]
    fn empty_and_single_leaf_roots_follow_rfc_6962() {
        assert_eq!(
            empty_root().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 test tree: the leaf hash of the empty leaf.
        assert_eq!(
            leaf_hash(b"").hex(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    /// The leaves of the 8-leaf tree of the certificate-transparency test data.
    fn reference_leaves() -> Vec<Digest> {
        let inputs: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        inputs.iter().map(|b| leaf_hash(b)).collect()
    }

    /// The 8-leaf tree of the certificate-transparency test data (RFC 6962 reference
    /// implementation, `merkle_tree_test`): roots of every prefix size.
    #[test]
    fn roots_of_the_reference_tree_match_the_published_values() {
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let all = reference_leaves();
        for (n, want) in expected.iter().enumerate() {
            let got = root_of(&all[..=n]);
            assert_eq!(got.hex(), *want, "root of the first {} leaves", n + 1);
            let from_plan = ProofPlan::root(n as u64 + 1)
                .assemble(lookup(&all))
                .unwrap();
            assert_eq!(from_plan, vec![got]);
        }
    }

    /// Inclusion and consistency proofs of the same reference tree (certificate-transparency
    /// test data, as used by RFC 6962 implementations), hash for hash.
    #[test]
    fn proofs_of_the_reference_tree_match_the_published_values() {
        let all = reference_leaves();
        let hexes = |v: Vec<Digest>| v.iter().map(Digest::hex).collect::<Vec<_>>();
        let inclusion: [(u64, u64, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, want) in inclusion {
            let got = ProofPlan::inclusion(index, size)
                .unwrap()
                .assemble(lookup(&all[..size as usize]))
                .unwrap();
            assert_eq!(hexes(got), want, "inclusion of {index} in {size}");
        }
        let consistency: [(u64, u64, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, want) in consistency {
            let got = ProofPlan::consistency(old, new)
                .unwrap()
                .assemble(lookup(&all[..new as usize]))
                .unwrap();
            assert_eq!(hexes(got), want, "consistency {old} → {new}");
        }
    }

    #[test]
    fn decompose_covers_the_range_with_maximal_subtrees() {
        assert_eq!(
            decompose(0, 13),
            vec![
                Node { level: 3, index: 0 },
                Node { level: 2, index: 2 },
                Node {
                    level: 0,
                    index: 12
                }
            ]
        );
        assert_eq!(decompose(4, 8), vec![Node { level: 2, index: 1 }]);
        assert!(decompose(5, 5).is_empty());
    }

    #[test]
    fn a_one_leaf_tree_has_an_empty_inclusion_proof() {
        let all = leaves(1);
        let plan = ProofPlan::inclusion(0, 1).unwrap();
        assert!(plan.nodes().is_empty());
        verify_inclusion(0, 1, &all[0], &[], &all[0]).unwrap();
    }

    #[test]
    fn out_of_range_and_bad_sizes_are_refused() {
        assert!(ProofPlan::inclusion(5, 5).is_err());
        assert!(ProofPlan::consistency(0, 5).is_err());
        assert!(ProofPlan::consistency(6, 5).is_err());
    }

    #[test]
    fn every_inclusion_and_consistency_proof_of_small_trees_verifies() {
        let all = leaves(70);
        for n in 1..=70u64 {
            let root = root_of(&all[..n as usize]);
            for i in 0..n {
                let proof = ProofPlan::inclusion(i, n)
                    .unwrap()
                    .assemble(lookup(&all[..n as usize]))
                    .unwrap();
                verify_inclusion(i, n, &all[i as usize], &proof, &root).unwrap();
            }
            for m in 1..=n {
                let old_root = root_of(&all[..m as usize]);
                let proof = ProofPlan::consistency(m, n)
                    .unwrap()
                    .assemble(lookup(&all[..n as usize]))
                    .unwrap();
                verify_consistency(m, n, &old_root, &root, &proof)
                    .unwrap_or_else(|e| panic!("{m} → {n}: {e}"));
            }
        }
    }

    proptest! {
        #[test]
        fn a_changed_proof_element_leaf_or_index_fails(n in 2u64..300, seed in any::<u64>(), flip in any::<u8>()) {
            let all = leaves(n);
            let i = seed % n;
            let root = root_of(&all);
            let mut proof = ProofPlan::inclusion(i, n).unwrap().assemble(lookup(&all)).unwrap();
            prop_assert!(verify_inclusion(i, n, &all[i as usize], &proof, &root).is_ok());
            // Another leaf at the same index fails.
            let other = all[((i + 1) % n) as usize];
            prop_assert!(verify_inclusion(i, n, &other, &proof, &root).is_err());
            // The same leaf claimed at another index fails.
            let j = (i + 1 + seed % (n - 1)) % n;
            if j != i {
                prop_assert!(verify_inclusion(j, n, &all[i as usize], &proof, &root).is_err());
            }
            // Any flipped bit in any proof element fails.
            if !proof.is_empty() {
                let k = (flip as usize) % proof.len();
                proof[k].0[(flip as usize) % 32] ^= 1 << (flip % 8);
                prop_assert!(verify_inclusion(i, n, &all[i as usize], &proof, &root).is_err());
            }
        }

        #[test]
        fn consistency_fails_for_a_rewritten_history(old in 1u64..200, extra in 1u64..200, victim in any::<u64>()) {
            let new = old + extra;
            let mut all = leaves(new);
            let old_root = root_of(&all[..old as usize]);
            // Rewrite one leaf that the old tree already contained.
            let v = (victim % old) as usize;
            all[v] = leaf_hash(b"rewritten");
            let new_root = root_of(&all);
            let proof = ProofPlan::consistency(old, new).unwrap().assemble(lookup(&all)).unwrap();
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_err());
        }
    }
}
