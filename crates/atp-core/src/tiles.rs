//! How a partition's Merkle log is stored: C2SP `tlog-tiles` tiles of height 8.
//!
//! A tile at tile level `L`, index `N` holds up to 256 consecutive hashes of tree level `8·L`
//! (nodes `N·256 …`), 32 bytes each, concatenated. Level 0 tiles hold the leaf hashes; a tile
//! at level `L > 0` holds the roots of full tiles of level `L − 1`. The hash of any complete
//! subtree is recomputed from at most 128 hashes of one tile, so a proof reads one tile per
//! tile level on its path plus the right edge: O(log n) reads, never a scan of the leaves.
//!
//! Tiles only grow: a tile is rewritten while it is the right edge of its level (its width
//! below 256) and never again once full, and a wider copy always starts with the narrower one.
//! [`TileLog`] is the in-memory right edge a writer keeps: it takes leaf hashes and says which
//! tiles to write; its root and size are those of the whole tree.

use std::collections::HashMap;
use std::marker::PhantomData;

use crate::chain::Digest;
use crate::merkle::{Node, decompose, fold_range, node_hash, perfect_root};

/// Tree levels per tile.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
const HASH: usize = 32;

/// A tile's coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub level: u8,
    pub index: u64,
}

impl TileId {
    /// How many hashes this tile holds in a tree of `size` leaves (0 if none yet).
    pub fn width_at(self, size: u64) -> u64 {
        let stored = stored_at_level(self.level, size);
        stored
            .saturating_sub(self.index * TILE_WIDTH)
            .min(TILE_WIDTH)
    }
}

/// Number of tree-level `8·level` nodes that exist in a tree of `size` leaves.
fn stored_at_level(level: u8, size: u64) -> u64 {
    let shift = u32::from(level) * u32::from(TILE_HEIGHT);
    if shift >= 64 { 0 } else { size >> shift }
}

/// Where the stored hashes that make up `node` live: its tile, the first hash's position in
/// the tile, and how many hashes (a power of two ≤ 256).
pub fn locate(node: Node) -> (TileId, usize, usize) {
    let tile_level = node.level / TILE_HEIGHT;
    let within = node.level % TILE_HEIGHT;
    let first = node.index << within;
    (
        TileId {
            level: tile_level,
            index: first / TILE_WIDTH,
        },
        (first % TILE_WIDTH) as usize,
        1usize << within,
    )
}

/// The hash at position `i` of a tile's bytes.
pub fn hash_at(tile: &[u8], i: usize) -> Option<Digest> {
    let bytes = tile.get(i * HASH..(i + 1) * HASH)?;
    let mut d = [0u8; 32];
    d.copy_from_slice(bytes);
    Some(Digest(d))
}

/// Computes `node`'s hash from the bytes of the tile [`locate`] names; `None` if the tile is
/// too narrow (the node is not complete in what was stored).
pub fn node_from_tile(node: Node, tile: &[u8]) -> Option<Digest> {
    let (_, first, count) = locate(node);
    if tile.len() < (first + count) * HASH {
        return None;
    }
    let row: Vec<Digest> = (first..first + count)
        .map(|i| hash_at(tile, i))
        .collect::<Option<_>>()?;
    Some(perfect_root(&row))
}

/// The tiles holding the hashes of `nodes`, without repeats.
pub fn tiles_for(nodes: &[Node]) -> Vec<TileId> {
    let mut tiles: Vec<TileId> = nodes.iter().map(|n| locate(*n).0).collect();
    tiles.sort_unstable();
    tiles.dedup();
    tiles
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    #[error(
        "tile (level {level}, index {index}) is missing or narrower than a tree of size {size} needs"
    )]
    Missing { level: u8, index: u64, size: u64 },
}

/// The right-edge (not yet full) tiles of a tree of `size` leaves, one per tile level that has
/// any: what [`TileLog::resume`] reads.
pub fn edge_tiles(size: u64) -> Vec<TileId> {
    (0u8..)
        .map_while(|level| {
            let stored = stored_at_level(level, size);
            (stored > 0).then_some((level, stored))
        })
        .filter(|(_, stored)| stored % TILE_WIDTH > 0)
        .map(|(level, stored)| TileId {
            level,
            index: stored / TILE_WIDTH,
        })
        .collect()
}

/// A tile to store: its coordinates and its bytes (32 × width).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileWrite {
    pub id: TileId,
    pub hashes: Vec<u8>,
}

/// The right edge of a Merkle log: the partly filled tile of each tile level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TileLog {
    size: u64,
    /// `edge[L]`: the hashes of level `L`'s rightmost, not yet full tile.
    edge: Vec<Vec<u8>>,
    /// Tiles completed or grown since the last [`Self::take_writes`].
    completed: Vec<TileWrite>,
    dirty: Vec<bool>,
}

impl TileLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes from storage: `tile(id)` returns the stored bytes of the right-edge tiles of a
    /// tree of `size` leaves (possibly wider: a later writer may have grown them).
    pub fn resume(
        size: u64,
        mut tile: impl FnMut(TileId) -> Option<Vec<u8>>,
    ) -> Result<Self, TileError> {
        let mut edge = Vec::new();
        let mut level = 0u8;
        while stored_at_level(level, size) > 0 {
            let stored = stored_at_level(level, size);
            let id = TileId {
                level,
                index: stored / TILE_WIDTH,
            };
            let width = (stored % TILE_WIDTH) as usize;
            let mut bytes = Vec::with_capacity(TILE_WIDTH as usize * HASH);
            if width > 0 {
                let stored_bytes =
                    tile(id)
                        .filter(|b| b.len() >= width * HASH)
                        .ok_or(TileError::Missing {
                            level,
                            index: id.index,
                            size,
                        })?;
                bytes.extend_from_slice(&stored_bytes[..width * HASH]);
            }
            edge.push(bytes);
            level += 1;
        }
        let dirty = vec![false; edge.len()];
        Ok(Self {
            size,
            edge,
            completed: Vec::new(),
            dirty,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the next leaf.
    pub fn push(&mut self, leaf: Digest) {
        let mut hash = leaf;
        let mut level = 0usize;
        loop {
            if self.edge.len() == level {
                self.edge
                    .push(Vec::with_capacity(TILE_WIDTH as usize * HASH));
                self.dirty.push(false);
            }
            self.edge[level].extend_from_slice(&hash.0);
            self.dirty[level] = true;
            if self.edge[level].len() < TILE_WIDTH as usize * HASH {
                break;
            }
            // The tile is full: store it, and its root becomes the next level's next hash.
            let full = std::mem::replace(
                &mut self.edge[level],
                Vec::with_capacity(TILE_WIDTH as usize * HASH),
            );
            let row: Vec<Digest> = (0..TILE_WIDTH as usize)
                .filter_map(|i| hash_at(&full, i))
                .collect();
            hash = perfect_root(&row);
            let index = stored_at_level(level as u8, self.size + 1) / TILE_WIDTH - 1;
            self.completed.push(TileWrite {
                id: TileId {
                    level: level as u8,
                    index,
                },
                hashes: full,
            });
            self.dirty[level] = false;
            level += 1;
        }
        self.size += 1;
    }

    /// The tree's root (the empty tree's root when no leaf was pushed).
    pub fn root(&self) -> Digest {
        let nodes = decompose(0, self.size);
        let hashes: Vec<Digest> = nodes
            .iter()
            .filter_map(|n| {
                let (id, _, _) = locate(*n);
                node_from_tile(*n, self.edge.get(id.level as usize)?)
            })
            .collect();
        debug_assert_eq!(
            hashes.len(),
            nodes.len(),
            "the edge holds every right-edge node"
        );
        fold_range(&hashes).unwrap_or_else(crate::merkle::empty_root)
    }

    /// The tiles to store since the last call: every tile that filled up, then every right-edge
    /// tile that grew. Writing them (tiles only grow) makes storage match this log.
    pub fn take_writes(&mut self) -> Vec<TileWrite> {
        let mut writes = std::mem::take(&mut self.completed);
        for (level, dirty) in self.dirty.iter_mut().enumerate() {
            if *dirty && !self.edge[level].is_empty() {
                writes.push(TileWrite {
                    id: TileId {
                        level: level as u8,
                        index: stored_at_level(level as u8, self.size) / TILE_WIDTH,
                    },
                    hashes: self.edge[level].clone(),
                });
            }
            *dirty = false;
        }
        writes
    }
}

/// Hash of `node` from a set of tiles already read (a map from tile to bytes).
pub fn node_from_tiles<'a>(
    node: Node,
    mut tile: impl FnMut(TileId) -> Option<&'a [u8]>,
) -> Option<Digest> {
    node_from_tile(node, tile(locate(node).0)?)
}

/// Resolves node hashes from tiles already read, remembering each subtree it computes.
///
/// [`node_from_tile`] rebuilds a subtree from its tile row every time: up to 255 hashes for a
/// node seven levels above its stored row. Proofs of nearby leaves share most of their nodes,
/// so for a batch of them (an export's pages) this cache brings the cost down to about two
/// hashes per proof.
pub struct NodeCache<'a, F> {
    tile: F,
    memo: HashMap<Node, Digest>,
    _tiles: PhantomData<&'a [u8]>,
}

impl<'a, F: FnMut(TileId) -> Option<&'a [u8]>> NodeCache<'a, F> {
    pub fn new(tile: F) -> Self {
        Self {
            tile,
            memo: HashMap::new(),
            _tiles: PhantomData,
        }
    }

    /// `node`'s hash; `None` when a tile it needs is missing or too narrow.
    pub fn get(&mut self, node: Node) -> Option<Digest> {
        if node.level.is_multiple_of(TILE_HEIGHT) {
            let (tile, first, _) = locate(node);
            return hash_at((self.tile)(tile)?, first);
        }
        if let Some(d) = self.memo.get(&node) {
            return Some(*d);
        }
        let child = |index| Node {
            level: node.level - 1,
            index,
        };
        let left = self.get(child(node.index * 2))?;
        let right = self.get(child(node.index * 2 + 1))?;
        let d = node_hash(&left, &right);
        self.memo.insert(node, d);
        Some(d)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::merkle::{ProofPlan, leaf_hash, root_of, verify_inclusion};

    fn leaves(n: u64) -> Vec<Digest> {
        (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    /// Stores writes the way a database would: upsert, growing only.
    fn store(db: &mut HashMap<TileId, Vec<u8>>, writes: Vec<TileWrite>) {
        for w in writes {
            let slot = db.entry(w.id).or_default();
            assert!(w.hashes.starts_with(slot), "tiles only grow");
            *slot = w.hashes;
        }
    }

    #[test]
    fn locate_maps_nodes_into_tiles() {
        assert_eq!(
            locate(Node {
                level: 0,
                index: 300
            }),
            (TileId { level: 0, index: 1 }, 44, 1)
        );
        assert_eq!(
            locate(Node { level: 3, index: 5 }),
            (TileId { level: 0, index: 0 }, 40, 8)
        );
        assert_eq!(
            locate(Node { level: 8, index: 2 }),
            (TileId { level: 1, index: 0 }, 2, 1)
        );
        assert_eq!(
            locate(Node {
                level: 17,
                index: 1
            }),
            (TileId { level: 2, index: 0 }, 2, 2)
        );
    }

    #[test]
    fn the_log_root_is_the_reference_root_at_every_size() {
        let all = leaves(70_000);
        let mut log = TileLog::new();
        for (i, l) in all.iter().enumerate() {
            log.push(*l);
            let n = i + 1;
            if n < 600 || n % 4099 == 0 || n == all.len() {
                assert_eq!(log.root(), root_of(&all[..n]), "size {n}");
            }
        }
    }

    #[test]
    fn stored_tiles_answer_proofs_and_resume_the_log() {
        let all = leaves(66_000);
        let mut db = HashMap::new();
        let mut log = TileLog::new();
        // Write in uneven batches, as a worker would.
        for (i, chunk) in all.chunks(777).enumerate() {
            for l in chunk {
                log.push(*l);
            }
            store(&mut db, log.take_writes());
            if i % 20 == 0 {
                let resumed = TileLog::resume(log.size(), |id| db.get(&id).cloned()).unwrap();
                assert_eq!(resumed.root(), log.root());
            }
        }
        let size = all.len() as u64;
        assert_eq!(db[&TileId { level: 0, index: 0 }].len(), 256 * 32);
        // 66,000 leaves: 257 full level-0 tiles, so level 1 holds one full tile and one hash.
        assert_eq!(db[&TileId { level: 1, index: 0 }].len(), 256 * 32);
        assert_eq!(db[&TileId { level: 1, index: 1 }].len(), 32);
        // Proofs at an older size read the same (grown) tiles.
        for n in [1u64, 255, 256, 257, 65_536, 65_537, size] {
            let root = root_of(&all[..n as usize]);
            for i in [0, n / 3, n - 1] {
                let plan = ProofPlan::inclusion(i, n).unwrap();
                let proof = plan
                    .assemble(|node| node_from_tiles(node, |t| db.get(&t).map(|v| v.as_slice())))
                    .unwrap();
                verify_inclusion(i, n, &all[i as usize], &proof, &root).unwrap();
            }
        }
        // The memoising resolver gives the same proofs, for a run of neighbours at once.
        let mut cache = NodeCache::new(|t| db.get(&t).map(Vec::as_slice));
        for i in 60_000..60_600 {
            let plan = ProofPlan::inclusion(i, size).unwrap();
            let cached = plan.assemble(|node| cache.get(node)).unwrap();
            let direct = plan
                .assemble(|node| node_from_tiles(node, |t| db.get(&t).map(Vec::as_slice)))
                .unwrap();
            assert_eq!(cached, direct, "leaf {i}");
        }
        assert!(
            NodeCache::new(|_| None)
                .get(Node { level: 3, index: 0 })
                .is_none(),
            "a missing tile is reported, not guessed"
        );
        // A resume from storage that lacks the edge is refused, not guessed.
        db.remove(&TileId {
            level: 0,
            index: size / 256,
        });
        assert!(TileLog::resume(size, |id| db.get(&id).cloned()).is_err());
        assert_eq!(
            edge_tiles(size),
            vec![
                TileId {
                    level: 0,
                    index: size / 256
                },
                TileId { level: 1, index: 1 },
                TileId { level: 2, index: 0 }
            ]
        );
        assert!(edge_tiles(0).is_empty());
        assert_eq!(edge_tiles(256), vec![TileId { level: 1, index: 0 }]);
    }

    #[test]
    fn width_follows_the_tree_size() {
        let t = TileId { level: 0, index: 1 };
        assert_eq!(t.width_at(256), 0);
        assert_eq!(t.width_at(300), 44);
        assert_eq!(t.width_at(10_000), 256);
        assert_eq!(TileId { level: 1, index: 0 }.width_at(70_000), 256);
        assert_eq!(TileId { level: 1, index: 1 }.width_at(70_000), 17);
    }
}
