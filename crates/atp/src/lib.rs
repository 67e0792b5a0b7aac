//! The `atp` binary's library: `serve` (any subset of roles in one process), the dev stack,
//! key files, and the benchmarks. Tests start ATP through [`serve::start`], the same entry
//! point as `atp serve`.

pub mod admin;
pub mod bench;
pub mod dev;
pub mod dlq;
pub mod keys;
pub mod serve;
pub mod verify;
