//! Cross-checks of ATP's Merkle log, tiles, signed notes and checkpoints against independent
//! implementations: Cloudflare's `tlog_tiles` and `signed_note` (Rust ports of Go's
//! `golang.org/x/mod/sumdb/tlog` and `…/sumdb/note`), linked only by these tests.
//!
//! Every comparison is between real values computed by both sides, and every loop over
//! generated cases asserts how many it compared, so a loop that ran zero times fails instead of
//! passing. Where the two sides are known to differ (ATP's checkpoint parser is looser), each
//! case is named below with its reason and both behaviours are asserted, so a change on either
//! side is noticed.

// Helpers outside `#[test]` functions unwrap too: a failure here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use atp_core::Digest;
use atp_core::checkpoint::Checkpoint;
use atp_core::merkle::{
    ProofPlan, empty_root, leaf_hash, root_of, verify_consistency, verify_inclusion,
};
use atp_core::note::{self, NoteError, NoteSigner, Verifier};
use atp_core::tiles::{TILE_HEIGHT, TileId, TileLog, TileWrite, node_from_tiles};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use signed_note as sn;
use signed_note::{Signer as _, Verifier as _};
use tlog_tiles as tl;

/// Leaves in the shared log: more than 256² = 65,536, so the tree has three tile levels and
/// level 1 holds one full tile and one partial tile.
const N: u64 = 70_000;

/// The bytes of record `i`: deterministic, of varying length.
fn record(i: u64) -> Vec<u8> {
    format!(
        "{{\"chainIndex\":{i},\"payload\":\"{}\"}}",
        "x".repeat((i % 37) as usize)
    )
    .into_bytes()
}

fn theirs(d: &Digest) -> tl::Hash {
    tl::Hash(d.0)
}

fn ours(h: &tl::Hash) -> Digest {
    Digest(h.0)
}

fn to_theirs(p: &[Digest]) -> Vec<tl::Hash> {
    p.iter().map(theirs).collect()
}

fn to_ours(p: &[tl::Hash]) -> Vec<Digest> {
    p.iter().map(ours).collect()
}

/// The oracle's in-memory hash storage: every hash `stored_hashes` returned, at its stored
/// hash index (Crosby–Wallach order).
struct HashStore(Vec<tl::Hash>);

impl tl::HashReader for HashStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tl::Hash>, tl::Error> {
        indexes
            .iter()
            .map(|&i| {
                self.0
                    .get(i as usize)
                    .copied()
                    .ok_or(tl::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Serves our tiles to the oracle's `TileHashReader`, which authenticates every tile it reads
/// against the tree hash it is given before it answers from them.
struct OurTiles<'a> {
    tiles: &'a HashMap<TileId, Vec<u8>>,
    served: Cell<usize>,
}

impl tl::TileReader for OurTiles<'_> {
    fn height(&self) -> u8 {
        TILE_HEIGHT
    }

    fn read_tiles(&self, wanted: &[tl::Tile]) -> Result<Vec<Vec<u8>>, tl::Error> {
        self.served.set(self.served.get() + wanted.len());
        wanted
            .iter()
            .map(|t| {
                let id = TileId {
                    level: t.level(),
                    index: t.level_index(),
                };
                // Tiles only grow: a tile of an older tree is a prefix of the stored one.
                let len = t.width() as usize * 32;
                self.tiles
                    .get(&id)
                    .and_then(|b| b.get(..len))
                    .map(<[u8]>::to_vec)
                    .ok_or(tl::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _: &[tl::Tile], _: &[Vec<u8>]) {}
}

/// One log of `N` records, built once per test process by both sides.
struct Fixture {
    /// Our leaf hashes.
    leaves: Vec<Digest>,
    /// The oracle's stored hashes of the same records (computed from the record bytes).
    store: HashStore,
    /// Our tiles after writing all `N` leaves through [`TileLog`], last write of a tile wins.
    tiles: HashMap<TileId, Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut store = HashStore(Vec::new());
        let mut leaves = Vec::with_capacity(N as usize);
        let mut log = TileLog::new();
        let mut tiles = HashMap::new();
        for i in 0..N {
            let bytes = record(i);
            assert_eq!(tl::stored_hash_index(0, i), store.0.len() as u64);
            let new = tl::stored_hashes(i, &bytes, &store).unwrap();
            store.0.extend(new);
            let leaf = leaf_hash(&bytes);
            leaves.push(leaf);
            log.push(leaf);
            if i % 1000 == 999 || i == N - 1 {
                for w in log.take_writes() {
                    tiles.insert(w.id, w.hashes);
                }
            }
        }
        assert_eq!(store.0.len() as u64, tl::stored_hash_count(N));
        Fixture {
            leaves,
            store,
            tiles,
        }
    })
}

impl Fixture {
    fn oracle_root(&self, size: u64) -> tl::Hash {
        tl::tree_hash(size, &self.store).unwrap()
    }

    /// Our proof for `plan`, its subtree hashes read from our tiles (the production path).
    fn assemble(&self, plan: &ProofPlan) -> Vec<Digest> {
        plan.assemble(|node| node_from_tiles(node, |t| self.tiles.get(&t).map(Vec::as_slice)))
            .unwrap()
    }
}

/// splitmix64: deterministic sample indexes without a dependency.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Tree sizes around every power-of-two and tile boundary the log reaches.
const BIG_SIZES: [u64; 16] = [
    255, 256, 257, 511, 512, 513, 1000, 4095, 4096, 4097, 65_535, 65_536, 65_537, 66_000, 69_999,
    70_000,
];

/// Sizes up to this bound are checked exhaustively: every index, every old size.
const ALL_PAIRS_UP_TO: u64 = 160;

/// (index, size) pairs: all of them for small trees, edges and samples for big ones.
fn inclusion_pairs() -> BTreeSet<(u64, u64)> {
    let mut pairs = BTreeSet::new();
    for n in 1..=ALL_PAIRS_UP_TO {
        for i in 0..n {
            pairs.insert((i, n));
        }
    }
    for (k, &n) in BIG_SIZES.iter().enumerate() {
        let mut idx = vec![
            0,
            1,
            2,
            127,
            128,
            255,
            256,
            257,
            65_535,
            65_536,
            n / 2,
            n - 2,
            n - 1,
        ];
        idx.extend((0..12).map(|j| mix(k as u64 * 100 + j) % n));
        for i in idx.into_iter().filter(|&i| i < n) {
            pairs.insert((i, n));
        }
    }
    pairs
}

/// (old, new) pairs: all of them for small trees, every pair of the big sizes (and small olds).
fn consistency_pairs() -> BTreeSet<(u64, u64)> {
    let mut pairs = BTreeSet::new();
    for n in 1..=ALL_PAIRS_UP_TO {
        for m in 1..=n {
            pairs.insert((m, n));
        }
    }
    let mut sizes: Vec<u64> = vec![1, 2, 3, 7, 8, 9, 100];
    sizes.extend(BIG_SIZES);
    for (k, &n) in sizes.iter().enumerate() {
        for &m in &sizes {
            if m <= n {
                pairs.insert((m, n));
            }
        }
        pairs.insert((1 + mix(k as u64) % n, n));
    }
    pairs
}

#[test]
fn leaf_hashes_and_tree_roots_agree_with_the_oracle() {
    let f = fixture();
    // Leaf hashes: ours from `leaf_hash`, theirs as stored by `stored_hashes` from the bytes.
    for i in 0..N {
        let stored = f.store.0[tl::stored_hash_index(0, i) as usize];
        assert_eq!(
            f.leaves[i as usize],
            ours(&stored),
            "leaf hash of record {i}"
        );
        assert_eq!(tl::record_hash(&record(i)), stored);
    }

    let mut sizes: Vec<u64> = (0..=600).collect();
    sizes.extend([
        1023, 1024, 1025, 4096, 65_535, 65_536, 65_537, 66_000, 69_999, 70_000,
    ]);
    let wanted: BTreeSet<u64> = sizes.iter().copied().collect();
    let mut log = TileLog::new();
    let mut compared = 0;
    for n in 0..=N {
        if n > 0 {
            log.push(f.leaves[n as usize - 1]);
        }
        if !wanted.contains(&n) {
            continue;
        }
        let oracle = ours(&f.oracle_root(n));
        assert_eq!(
            root_of(&f.leaves[..n as usize]),
            oracle,
            "root_of, size {n}"
        );
        assert_eq!(log.root(), oracle, "TileLog::root, size {n}");
        compared += 1;
    }
    assert_eq!(compared, 611);
    assert_eq!(empty_root(), ours(&tl::EMPTY_HASH));
}

#[test]
fn inclusion_proofs_agree_with_the_oracle() {
    let f = fixture();
    let pairs = inclusion_pairs();
    // 12,880 exhaustive pairs for sizes 1..=160, plus edges and samples of the big sizes.
    assert_eq!(pairs.len(), 13_236);
    let mut roots = BTreeMap::new();
    let mut rejected_both = 0;
    for &(i, n) in &pairs {
        let root = *roots.entry(n).or_insert_with(|| f.oracle_root(n));
        let leaf = f.leaves[i as usize];
        let mine = f.assemble(&ProofPlan::inclusion(i, n).unwrap());
        let oracle = tl::prove_record(n, i, &f.store).unwrap();
        assert_eq!(
            mine,
            to_ours(&oracle),
            "inclusion proof of leaf {i} in size {n}"
        );
        tl::check_record(&to_theirs(&mine), n, root, i, theirs(&leaf))
            .unwrap_or_else(|e| panic!("oracle refuses our proof of leaf {i} in size {n}: {e}"));
        verify_inclusion(i, n, &leaf, &to_ours(&oracle), &ours(&root))
            .unwrap_or_else(|e| panic!("we refuse the oracle's proof of {i} in {n}: {e}"));
        // Both refuse the same proof with one bit flipped.
        if !mine.is_empty() {
            let mut bad = mine.clone();
            let k = (mix(i ^ (n << 20)) as usize) % bad.len();
            bad[k].0[(i % 32) as usize] ^= 1;
            assert!(verify_inclusion(i, n, &leaf, &bad, &ours(&root)).is_err());
            assert!(tl::check_record(&to_theirs(&bad), n, root, i, theirs(&leaf)).is_err());
            rejected_both += 1;
        }
    }
    // Every pair but (0, 1), whose proof is empty.
    assert_eq!(rejected_both, 13_235);
}

#[test]
fn consistency_proofs_agree_with_the_oracle() {
    let f = fixture();
    let pairs = consistency_pairs();
    // 12,880 exhaustive pairs for sizes 1..=160, plus pairs among the chosen sizes.
    assert_eq!(pairs.len(), 13_143);
    let mut roots = BTreeMap::new();
    let mut rejected_both = 0;
    for &(m, n) in &pairs {
        let old_root = *roots.entry(m).or_insert_with(|| f.oracle_root(m));
        let new_root = *roots.entry(n).or_insert_with(|| f.oracle_root(n));
        let mine = f.assemble(&ProofPlan::consistency(m, n).unwrap());
        // The oracle names the new size `t` and the old size `n`.
        let oracle = tl::prove_tree(n, m, &f.store).unwrap();
        assert_eq!(mine, to_ours(&oracle), "consistency proof {m} → {n}");
        tl::check_tree(&to_theirs(&mine), n, new_root, m, old_root)
            .unwrap_or_else(|e| panic!("oracle refuses our proof {m} → {n}: {e}"));
        verify_consistency(m, n, &ours(&old_root), &ours(&new_root), &to_ours(&oracle))
            .unwrap_or_else(|e| panic!("we refuse the oracle's proof {m} → {n}: {e}"));
        if !mine.is_empty() {
            let mut bad = mine.clone();
            let k = (mix(m ^ (n << 20)) as usize) % bad.len();
            bad[k].0[(m % 32) as usize] ^= 0x80;
            assert!(verify_consistency(m, n, &ours(&old_root), &ours(&new_root), &bad).is_err());
            assert!(tl::check_tree(&to_theirs(&bad), n, new_root, m, old_root).is_err());
            rejected_both += 1;
        }
    }
    // Every pair but old = new, whose proof is empty.
    assert_eq!(rejected_both, 12_967);
}

/// A tile as the oracle names it: (level, index within the level, width in hashes).
type Coordinates = (u8, u64, u32);

/// Our tile write's coordinates.
fn coordinates(w: &TileWrite) -> Coordinates {
    assert_eq!(w.hashes.len() % 32, 0);
    (w.id.level, w.id.index, (w.hashes.len() / 32) as u32)
}

/// The C2SP tlog-tiles path of a hash tile, `tile/<L>/<N>[.p/<W>]`, with `N` in zero-padded
/// groups of three digits, all but the last prefixed by `x`.
fn c2sp_tile_path(level: u8, index: u64, width: u32) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut n = index / 1000;
    while n > 0 {
        groups.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    groups.reverse();
    let partial = if width == 256 {
        String::new()
    } else {
        format!(".p/{width}")
    };
    format!("tile/{level}/{}{partial}", groups.join("/"))
}

#[test]
fn tile_writes_and_bytes_match_the_oracles_tiles() {
    let f = fixture();
    // Uneven batches, as a worker sees them; they cross tile and level boundaries.
    let batches = [1u64, 2, 253, 256, 300, 777, 1, 1024, 4099, 255, 1, 57_000];
    let mut log = TileLog::new();
    let mut stored: HashMap<TileId, Vec<u8>> = HashMap::new();
    let mut old = 0u64;
    let mut compared_writes = 0;
    for (b, &len) in batches.iter().cycle().enumerate() {
        if old == N {
            break;
        }
        let new = (old + len).min(N);
        for leaf in &f.leaves[old as usize..new as usize] {
            log.push(*leaf);
        }
        let writes = log.take_writes();
        // What we write after the batch is exactly what the oracle says to publish when the
        // tree grows from `old` to `new`, byte for byte.
        let mut mine: Vec<(Coordinates, &[u8])> = writes
            .iter()
            .map(|w| (coordinates(w), w.hashes.as_slice()))
            .collect();
        mine.sort_by_key(|(c, _)| *c);
        let oracle_tiles = tl::Tile::new_tiles(TILE_HEIGHT, old, new);
        let mut oracle: Vec<(Coordinates, Vec<u8>)> = oracle_tiles
            .iter()
            .map(|t| {
                let bytes = t.read_data(&f.store).unwrap();
                ((t.level(), t.level_index(), t.width()), bytes)
            })
            .collect();
        oracle.sort_by_key(|(c, _)| *c);
        assert_eq!(
            mine.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            oracle.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "tiles written for batch {b}, size {old} → {new}"
        );
        for ((c, a), (_, b)) in mine.iter().zip(&oracle) {
            assert!(
                *a == b.as_slice(),
                "bytes of tile {c:?}, size {old} → {new}"
            );
            compared_writes += 1;
        }
        for w in writes {
            stored.insert(w.id, w.hashes);
        }
        old = new;
    }
    assert_eq!(compared_writes, 307);

    // The final store against the oracle's full tile set for a tree of N leaves.
    let all = tl::Tile::new_tiles(TILE_HEIGHT, 0, N);
    // 273 full level-0 tiles and one of 112 hashes; level 1: one full, one of 17; level 2: 1.
    assert_eq!(all.len(), 277);
    assert_eq!(
        all.len(),
        stored.len(),
        "no tile stored that the oracle lacks"
    );
    assert_eq!(
        stored, f.tiles,
        "the fixture's batching stores the same tiles"
    );
    let mut partial = Vec::new();
    for t in &all {
        let id = TileId {
            level: t.level(),
            index: t.level_index(),
        };
        let bytes = &stored[&id];
        assert_eq!(bytes.len(), t.width() as usize * 32, "width of {id:?}");
        assert!(*bytes == t.read_data(&f.store).unwrap(), "bytes of {id:?}");
        assert_eq!(id.width_at(N), u64::from(t.width()));
        // Paths: the oracle writes the Go sumdb layout `tile/<H>/<L>/<N>[.p/<W>]`, i.e. the
        // C2SP tlog-tiles path `tile/<L>/<N>[.p/<W>]` with the height 8 inserted.
        let path = t.path();
        let c2sp = c2sp_tile_path(id.level, id.index, t.width());
        assert_eq!(path, format!("tile/8/{}", &c2sp["tile/".len()..]), "{id:?}");
        let back = tl::Tile::from_path(&path).unwrap();
        assert_eq!(
            (back.level(), back.level_index(), back.width()),
            (id.level, id.index, t.width())
        );
        if t.width() < 256 {
            partial.push((id, t.width(), path));
        }
    }
    // The right edge of N: a partial tile on every level.
    assert_eq!(
        partial
            .iter()
            .map(|(id, w, _)| (id.level, id.index, *w))
            .collect::<Vec<_>>(),
        vec![(0, 273, 112), (1, 1, 17), (2, 0, 1)]
    );
    for (id, w, path) in &partial {
        eprintln!(
            "ours (level {}, index {}, width {w}) → oracle {path}",
            id.level, id.index
        );
    }
    // A multi-group index, as in the C2SP example `x001/234`.
    let t = tl::Tile::new(TILE_HEIGHT, 0, 1234, 256, false);
    assert_eq!(t.path(), "tile/8/0/x001/234");
    assert_eq!(c2sp_tile_path(0, 1234, 256), "tile/0/x001/234");
    assert_eq!(c2sp_tile_path(0, 1_234_067, 8), "tile/0/x001/x234/067.p/8");
}

#[test]
fn the_oracle_authenticates_our_tiles_and_proves_from_them() {
    let f = fixture();
    let reader = OurTiles {
        tiles: &f.tiles,
        served: Cell::new(0),
    };
    let mut proofs = 0;
    for n in [
        1u64, 2, 255, 256, 257, 1000, 65_535, 65_536, 65_537, 69_999, N,
    ] {
        let root = f.oracle_root(n);
        // `TileHashReader` checks every tile it reads against `root` (InconsistentTile if not).
        let from_tiles = tl::TileHashReader::new(n, root, &reader);
        assert_eq!(tl::tree_hash(n, &from_tiles).unwrap(), root, "size {n}");
        for i in [0, n / 3, n / 2, n - 1] {
            let oracle = tl::prove_record(n, i, &from_tiles)
                .unwrap_or_else(|e| panic!("oracle cannot prove {i} in {n} from our tiles: {e}"));
            let mine = f.assemble(&ProofPlan::inclusion(i, n).unwrap());
            assert_eq!(mine, to_ours(&oracle), "leaf {i}, size {n}");
            proofs += 1;
        }
        for m in [1, n / 2, n - 1, n].into_iter().filter(|&m| m >= 1) {
            let oracle = tl::prove_tree(n, m, &from_tiles)
                .unwrap_or_else(|e| panic!("oracle cannot prove {m} → {n} from our tiles: {e}"));
            let mine = f.assemble(&ProofPlan::consistency(m, n).unwrap());
            assert_eq!(mine, to_ours(&oracle), "{m} → {n}");
            proofs += 1;
        }
    }
    // 4 inclusion proofs per size; 4 consistency proofs per size (2 for size 1, whose
    // candidate old sizes collapse to 1).
    assert_eq!(proofs, 11 * 4 + 2 + 10 * 4);
    assert!(
        reader.served.get() > 86,
        "{} tiles served",
        reader.served.get()
    );

    // A leaf hash altered in a stored tile. At 65,537 leaves the oracle reads the altered
    // tile's parent and refuses it. At N it returns a proof without checking: its
    // `TileHashReader` (like Go's) starts authenticating child tiles at `len(stx)`, the number
    // of tree-hash subtrees, not at the number of distinct tiles holding them (6 vs 3 at N), so
    // the tiles in between go unchecked. Either way no proof built from it verifies.
    let mut altered = f.tiles.clone();
    altered.get_mut(&TileId { level: 0, index: 3 }).unwrap()[4 * 32] ^= 1; // leaf 772, the sibling in the proof of leaf 773
    let bad = OurTiles {
        tiles: &altered,
        served: Cell::new(0),
    };
    let root = f.oracle_root(65_537);
    let refused = tl::prove_record(65_537, 773, &tl::TileHashReader::new(65_537, root, &bad));
    assert!(
        matches!(refused, Err(tl::Error::InconsistentTile)),
        "{refused:?}"
    );
    let root = f.oracle_root(N);
    let unchecked = tl::prove_record(N, 773, &tl::TileHashReader::new(N, root, &bad)).unwrap();
    let leaf = f.leaves[773];
    assert!(tl::check_record(&unchecked, N, root, 773, theirs(&leaf)).is_err());
    assert!(verify_inclusion(773, N, &leaf, &to_ours(&unchecked), &ours(&root)).is_err());
    let ours_from_bad = ProofPlan::inclusion(773, N)
        .unwrap()
        .assemble(|node| node_from_tiles(node, |t| altered.get(&t).map(Vec::as_slice)))
        .unwrap();
    assert_eq!(
        ours_from_bad,
        to_ours(&unchecked),
        "both read the same altered hash"
    );
}

/// A rand_core 0.6 RNG that yields a fixed seed, so `signed_note::generate_key` is
/// deterministic: Ed25519 key generation draws exactly the 32-byte secret key.
struct SeedRng {
    seed: [u8; 32],
    at: usize,
}

impl rand_core_06::RngCore for SeedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = self.seed[self.at % 32];
            self.at += 1;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core_06::CryptoRng for SeedRng {}

const ORACLE_SEED: [u8; 32] = *b"oracle seed for signed_note key!";
const ORACLE_NAME: &str = "oracle.example/log";
const OUR_NAME: &str = "atp.example/acme/crm";

/// The oracle's key pair from [`ORACLE_SEED`]: (signer key, verifier key), both as strings.
fn oracle_keys() -> (String, String) {
    let (skey, vkey) = sn::generate_key(
        &mut SeedRng {
            seed: ORACLE_SEED,
            at: 0,
        },
        ORACLE_NAME,
    );
    // `PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)`: the fixed seed was used.
    let raw = B64.decode(skey.rsplit('+').next().unwrap()).unwrap();
    assert_eq!(raw[0], 0x01);
    assert_eq!(raw[1..], ORACLE_SEED);
    (skey, vkey)
}

fn our_signer() -> NoteSigner {
    NoteSigner::new(OUR_NAME, SigningKey::from_bytes(&[0x5a; 32])).unwrap()
}

fn oracle_sign(signer: &sn::StandardSigner, text: &str) -> String {
    let mut n = sn::Note::new(text.as_bytes(), &[]).unwrap();
    n.add_sigs(&[signer as &dyn sn::Signer]).unwrap();
    String::from_utf8(n.to_bytes()).unwrap()
}

/// Texts both sides must sign and open alike: a checkpoint body, several lines, non-ASCII.
const TEXTS: [&str; 4] = [
    "atp.example/acme/crm\n70000\nq1Fg0sS1Y0GUtQeTM3+KVZuXlm7+ARLmmuTqOZwLmWE=\n",
    "hello\nworld\n",
    "one line\n",
    "\u{3b1}\u{3c4}\u{3c0} \u{2014} log \u{2713}\n",
];

#[test]
fn notes_signed_by_us_open_with_the_oracle() {
    let signer = our_signer();
    let vkey = signer.verifier().encode();
    let oracle_verifier = sn::StandardVerifier::new(&vkey).unwrap();
    assert_eq!(oracle_verifier.name(), OUR_NAME);
    assert_eq!(oracle_verifier.key_id(), signer.verifier().key_id());
    let mut pk = vec![0x01];
    pk.extend_from_slice(signer.verifier().public_key().as_bytes());
    assert_eq!(sn::key_id(OUR_NAME, &pk), signer.verifier().key_id());
    let known = sn::VerifierList::new(vec![Box::new(oracle_verifier)]);
    for text in TEXTS {
        let signed = signer.sign(text).unwrap();
        let parsed = sn::Note::from_bytes(signed.as_bytes()).unwrap();
        assert_eq!(parsed.text(), text.as_bytes());
        let (verified, unverified) = parsed.verify(&known).unwrap();
        assert_eq!(verified.len(), 1, "{text:?}");
        assert!(unverified.is_empty());
        assert_eq!(verified[0].name(), OUR_NAME);
        assert_eq!(verified[0].id(), signer.verifier().key_id());
        // The oracle re-encodes our note byte for byte.
        assert_eq!(parsed.to_bytes(), signed.as_bytes());
        // Both refuse the note with its text changed.
        let first = text.chars().next().unwrap().len_utf8();
        let altered = format!("Z{}", &signed[first..]);
        assert!(matches!(
            sn::Note::from_bytes(altered.as_bytes())
                .unwrap()
                .verify(&known),
            Err(sn::NoteError::InvalidSignature { .. })
        ));
        assert!(matches!(
            note::open(&altered, std::slice::from_ref(signer.verifier())),
            Err(NoteError::InvalidSignature { .. })
        ));
    }
}

#[test]
fn notes_signed_by_the_oracle_open_with_us() {
    let (skey, vkey) = oracle_keys();
    let oracle_signer = sn::StandardSigner::new(&skey).unwrap();
    let v = Verifier::parse(&vkey).unwrap();
    assert_eq!(
        v.encode(),
        vkey,
        "our encoding of the oracle's verifier key"
    );
    assert_eq!(v.name(), ORACLE_NAME);
    assert_eq!(v.key_id(), oracle_signer.key_id());
    assert_eq!(
        note::key_id(ORACLE_NAME, v.public_key()),
        oracle_signer.key_id()
    );
    // Our signer on the same seed: Ed25519 is deterministic, so the notes are identical.
    let same_key = NoteSigner::new(ORACLE_NAME, SigningKey::from_bytes(&ORACLE_SEED)).unwrap();
    assert_eq!(same_key.verifier(), &v);
    let mine = our_signer();
    let known = [v.clone(), mine.verifier().clone()];
    for text in TEXTS {
        let signed = oracle_sign(&oracle_signer, text);
        let opened = note::open(&signed, std::slice::from_ref(&v)).unwrap();
        assert_eq!(opened.text, text);
        assert_eq!(opened.verified.len(), 1);
        assert_eq!(
            (opened.verified[0].name.as_str(), opened.verified[0].key_id),
            (ORACLE_NAME, oracle_signer.key_id())
        );
        assert_eq!(same_key.sign(text).unwrap(), signed, "{text:?}");

        // Cosigned: the oracle adds its signature to our note; each side opens both.
        let ours_signed = mine.sign(text).unwrap();
        let mut cosigned = sn::Note::from_bytes(ours_signed.as_bytes()).unwrap();
        cosigned.add_sigs(&[&oracle_signer]).unwrap();
        let cosigned = String::from_utf8(cosigned.to_bytes()).unwrap();
        assert_eq!(
            cosigned,
            format!(
                "{ours_signed}{}",
                &signed[text.len() + 1..] // the oracle's signature line
            )
        );
        let opened = note::open(&cosigned, &known).unwrap();
        assert_eq!(opened.verified.len(), 2);
        let oracle_known = sn::VerifierList::new(vec![
            Box::new(sn::StandardVerifier::new(&vkey).unwrap()),
            Box::new(sn::StandardVerifier::new(&mine.verifier().encode()).unwrap()),
        ]);
        let (verified, _) = sn::Note::from_bytes(cosigned.as_bytes())
            .unwrap()
            .verify(&oracle_known)
            .unwrap();
        assert_eq!(verified.len(), 2);
        // Only the oracle's key known to us: our signature is unknown, not a failure.
        let opened = note::open(&cosigned, std::slice::from_ref(&v)).unwrap();
        assert_eq!((opened.verified.len(), opened.unknown.len()), (1, 1));
    }
}

#[test]
fn checkpoints_parse_alike_both_ways() {
    let f = fixture();
    let cases = [
        ("atp.example/acme/crm".to_owned(), 0, empty_root()),
        ("atp.example/acme/crm".to_owned(), 1, f.leaves[0]),
        ("a".to_owned(), 65_537, ours(&f.oracle_root(65_537))),
        (
            "atp.example/acme/crm".to_owned(),
            N,
            ours(&f.oracle_root(N)),
        ),
        (
            "example.com/origin".to_owned(),
            u64::MAX,
            Digest([0xff; 32]),
        ),
        (
            "atp.example/t\u{e9}nant/src-\u{3b1}".to_owned(),
            20_852_163,
            Digest([7; 32]),
        ),
    ];
    let signer = our_signer();
    let (skey, vkey) = oracle_keys();
    let oracle_signer = sn::StandardSigner::new(&skey).unwrap();
    let oracle_known = sn::VerifierList::new(vec![Box::new(
        sn::StandardVerifier::new(&signer.verifier().encode()).unwrap(),
    )]);
    let our_known = [Verifier::parse(&vkey).unwrap()];
    for (origin, size, root) in &cases {
        let cp = Checkpoint {
            origin: origin.clone(),
            size: *size,
            root: *root,
        };
        // Ours → theirs.
        let body = cp.body();
        let parsed = tl::Checkpoint::from_bytes(body.as_bytes()).unwrap();
        assert_eq!(
            (parsed.origin(), parsed.size(), ours(parsed.hash())),
            (origin.as_str(), *size, *root)
        );
        assert_eq!(parsed.extension(), "");
        assert_eq!(parsed.to_bytes(), body.as_bytes());
        // Theirs → ours, without and with extension lines (which we ignore).
        for ext in ["", "ext-a\n", "ext-a\nsecond extension line\n"] {
            let theirs_cp = tl::Checkpoint::new(origin, *size, theirs(root), ext).unwrap();
            let text = String::from_utf8(theirs_cp.to_bytes()).unwrap();
            assert_eq!(Checkpoint::parse(&text).unwrap(), cp, "{text:?}");
            if ext.is_empty() {
                assert_eq!(text, body);
            }
        }
        // Signed by us, opened by the oracle; signed by the oracle, opened by us.
        let note = sn::Note::from_bytes(signer.sign(&body).unwrap().as_bytes()).unwrap();
        note.verify(&oracle_known).unwrap();
        let from_note = tl::Checkpoint::from_bytes(note.text()).unwrap();
        assert_eq!(from_note.to_bytes(), body.as_bytes());
        let signed = oracle_sign(&oracle_signer, &body);
        assert_eq!(Checkpoint::open(&signed, &our_known).unwrap(), cp);
    }
}

/// A root that is fine, to build malformed bodies around.
const R: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Malformed bodies both parsers refuse (`{R}` stands for a valid root).
const REFUSED_BY_BOTH: &[(&str, &str)] = &[
    ("", "empty"),
    ("o\n+1\n{R}\n", "size with a plus sign"),
    ("o\n1\n{R}\n\n", "an empty line after the root"),
    ("o\n1\n{R}\next\n\nmore\n", "an empty extension line"),
    ("\n1\n{R}\n", "empty origin"),
    ("o\n01\n{R}\n", "size with a leading zero"),
    ("o\n00\n{R}\n", "size 00"),
    ("o\n-1\n{R}\n", "negative size"),
    ("o\n 1\n{R}\n", "size with a leading space"),
    ("o\n1 \n{R}\n", "size with a trailing space"),
    ("o\n1\r\n{R}\n", "size ending in CR"),
    ("o\n0x10\n{R}\n", "hex size"),
    ("o\n18446744073709551616\n{R}\n", "size beyond u64"),
    (
        "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw==\n",
        "31-byte root",
    ),
    (
        "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\n",
        "33-byte root",
    ),
    (
        "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc\n",
        "unpadded base64 root",
    ),
    (
        "o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwd=\n",
        "non-canonical base64 root",
    ),
    (
        "o\n1\n-wcH-wcH-wcH-wcH-wcH-wcH-wcH-wcH-wcH-wcH-wc=\n",
        "URL-safe base64 root",
    ),
    ("o\n1\n {R}\n", "root with a leading space"),
    ("o\n1\n{R}\r\n", "root ending in CR"),
    ("o\n1\n{R}", "no final newline"),
    ("o\n1\n{R}\next", "extension line without a newline"),
    ("o\n1\n", "no root"),
    ("o\n", "no size"),
];

/// Well-formed bodies both parsers accept, with what they hold.
const ACCEPTED_BY_BOTH: &[(&str, &str, u64)] = &[
    ("o\n0\n{R}\n", "o", 0),
    ("o o\n1\n{R}\n", "o o", 1),
    (" \n1\n{R}\n", " ", 1),
    ("o\r\n1\n{R}\n", "o\r", 1),
    ("o\n1\n{R}\next\n", "o", 1),
    ("o\n1\n{R}\n\u{2014} x\n", "o", 1),
];

#[test]
fn malformed_checkpoints_are_judged_alike() {
    let body = |b: &str| b.replace("{R}", R);
    for (b, why) in REFUSED_BY_BOTH {
        let b = body(b);
        assert!(Checkpoint::parse(&b).is_err(), "we accept {why}: {b:?}");
        assert!(
            tl::Checkpoint::from_bytes(b.as_bytes()).is_err(),
            "the oracle accepts {why}: {b:?}"
        );
    }
    for (b, origin, size) in ACCEPTED_BY_BOTH {
        let b = body(b);
        let mine = Checkpoint::parse(&b).unwrap_or_else(|e| panic!("{b:?}: {e}"));
        let oracle = tl::Checkpoint::from_bytes(b.as_bytes()).unwrap();
        assert_eq!((mine.origin.as_str(), mine.size), (*origin, *size));
        assert_eq!((oracle.origin(), oracle.size()), (*origin, *size));
        assert_eq!(mine.root, ours(oracle.hash()));
    }
    assert_eq!(REFUSED_BY_BOTH.len() + ACCEPTED_BY_BOTH.len(), 30);
}
