//! ATP's process skeleton and its worker roles.
//!
//! One skeleton ([`reader`]) reads a stream in order from a position the role derives from its
//! own durable output, hands batches to the role, and retries a batch until its effect is
//! durable. Roles ([`ingest`], [`projector`]) are their batch handlers; [`replay`] reuses the
//! projector's row building to rebuild read models.

pub mod dead_letter;
pub mod dlq;
pub mod export;
pub mod ingest;
pub mod integrity;
pub mod outbound;
pub mod projector;
pub mod reader;
pub mod replay;
pub mod secret;
pub mod shard;
pub mod signer;

pub use reader::Shutdown;
pub use secret::Secret;
// The roles report through the telemetry crate, which the gateway shares without linking them.
use atp_telemetry::{metrics, panic_message, telemetry};

/// How a failed batch is treated by the skeleton.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// Transient (NATS or PostgreSQL hiccup, an append conflict): retry the same batch.
    #[error("retry: {0}")]
    Retry(String),
    /// Work the reader has already moved past turned out not to be durable (a pipelined commit
    /// failed): restart the role from the position derived from its durable output.
    #[error("restart: {0}")]
    Restart(String),
    /// The role cannot go on (misconfiguration, lost stream): stop and report.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Converts a JetStream timestamp to chrono.
pub(crate) fn to_chrono(t: time::OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    let nanos = t.unix_timestamp_nanos();
    chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}
