//! ATP's NATS JetStream adapter: subjects, stream definitions, atomic appends, the producer
//! registry, and the connection with its server-version check.
//!
//! Architecture invariant: nothing outside this crate spells a subject or publishes to
//! JetStream with raw headers; roles call the functions here.

pub mod admin_trail;
pub mod auth;
pub mod batch;
pub mod connect;
pub mod dlq;
pub mod exports;
pub mod headers;
pub mod integrity;
pub mod policy;
pub mod progress;
pub mod registry;
pub mod signing_keys;
pub mod streams;
pub mod subject_keys;
pub mod subjects;

pub use async_nats;
pub use batch::{Append, AppendError, Outgoing, append_atomic};
pub use connect::{ConnectError, MIN_SERVER_VERSION, connect, reconnects};
