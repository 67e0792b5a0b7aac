//! Relays: a producer's own system of record, relayed to ATP as signed events, with nothing
//! lost or doubled between the two. Each relay runs as a producer (its NATS identity may only
//! publish to its own ingress subjects) and takes the positions it read from the producer's
//! system only after ATP acknowledged what it sent.
//!
//! - [`outbox`]: a PostgreSQL outbox table (seed 000's CRM).
//! - [`kafka`]: trace events on a Kafka topic (seed 001's `audit.events.log`).

pub mod kafka;
pub mod outbox;

pub use outbox::{
    EXAMPLE_OUTBOX, OutboxMapping, OutboxRelay, OutboxRow, action_of, event_of, run_outbox,
};

use std::time::Duration;

use tokio::sync::watch;

/// Waits `d`, or less if `shutdown` changes.
async fn pause(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, shutdown.changed()).await;
}
