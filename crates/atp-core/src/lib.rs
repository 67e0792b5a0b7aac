//! ATP's pure domain core: names, canonical bytes, digests, hash chains, signed CloudEvents,
//! policy stamping, records, reason codes, what ingest does with each message, and the
//! integrity layer: Merkle logs stored as tiles, proofs, signed notes and checkpoints.
//!
//! Architecture invariant: this crate performs no I/O and depends on no async runtime, no
//! sqlx and no async-nats. Everything here is a function of its arguments, so it is tested
//! with known-answer vectors and property tests alone.

pub mod attestation;
pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod deadletter;
pub mod dsse;
pub mod edition;
pub mod event;
pub mod ingest;
pub mod keys;
pub mod merkle;
pub mod names;
pub mod note;
pub mod partition;
pub mod policy;
pub mod privacy;
pub mod producer;
pub mod reason;
pub mod record;
pub mod registry;
pub mod role;
pub mod tiles;
pub mod trace;
pub mod walk;
pub mod webhook;

pub use chain::{ChainLink, Digest};
pub use names::{PartitionKey, SourceId, TenantId};
pub use reason::{Reason, Rejection};
pub use record::{Record, SealedRecord};
