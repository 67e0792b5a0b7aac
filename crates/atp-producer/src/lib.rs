//! Send audit events to ATP, the Audit Trail Platform, so that they are kept immutable and
//! provable.
//!
//! An event goes through three steps. Each is one type:
//!
//! 1. **Build** it: an [`AuditEvent`] in plain fields (who did what to which resource), or a
//!    `cloudevents-sdk` [`cloudevents::Event`] you already have.
//! 2. **Sign** it with your [`Producer`], that is your [`Source`] and your [`Signer`]. The
//!    result is a [`SignedEvent`]: a CloudEvent with the DSSE `dssematerial` signature over its
//!    RFC 8785 bytes, exactly as ATP's contract (§2) asks. Its bytes never change again, so
//!    sending it twice is the same submission, and ATP records it once.
//! 3. **Send** it:
//!    - with a [`NatsPublisher`], straight to ATP's ingress stream on NATS JetStream, for the
//!      most throughput;
//!    - or with an [`HttpPublisher`], through ATP's gateway, which can also wait for the
//!      record.
//!
//!    Both retry what was not acknowledged, with exponential backoff and jitter ([`Retry`]).
//!
//! ```no_run
//! use atp_producer::{AuditEvent, NatsPublisher, Producer, Signer, Source};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // What `atp producer add acme crm --output creds/` printed and wrote.
//! let source = Source::new("acme", "crm", "https://crm.acme.example")?;
//! let signer = Signer::read_pem_file("creds/producer.pem".as_ref(), "crm-2026")?;
//! let producer = Producer::new(source, signer);
//! let nats =
//!     NatsPublisher::connect("nats://atp.acme.example:4222", "creds/nats.nk".as_ref(), producer.source())
//!         .await?;
//!
//! let event = producer.sign(
//!     AuditEvent::new("com.acme.contact.updated")
//!         .actor("user-42", "user")
//!         .action("UPDATE")
//!         .resource("Contact", "c-1001")
//!         .attribute("field", "email"),
//! )?;
//! let receipt = nats.publish(&event).await?;
//! println!("{} is durable at ingress #{}", receipt.idempotency_key, receipt.ingress_seq);
//! # Ok(()) }
//! ```
//!
//! # Exactly once
//!
//! - **Keep the id.** ATP recognises an event by `<tenant>:<source>:<id>`. Sending the same
//!   [`SignedEvent`] again answers the record it already made, never a second one. To retry
//!   after your own process restarted, rebuild the event with the same [`AuditEvent::id`]
//!   (say, your outbox row's id).
//! - **Number your events.** With a `sequence` on every event ([`AuditEvent::sequence`], or a
//!   [`Sequencer`] on the producer), ATP also refuses, as `SEQUENCE_REGRESSION`, any event at
//!   or below the highest sequence it recorded for the source. So even a very old repeat is
//!   never recorded twice. [`Sequencer::file`] keeps the count across restarts.
//!
//! # What ATP answers
//!
//! - JetStream's acknowledgement ([`Receipt`]) means the event is durable in ATP. ATP then
//!   makes it a record or a rejection, never nothing. Over NATS, a rejection is found with
//!   `GET /api/v1/audit/rejections`.
//! - Over HTTP with [`HttpPublisher::wait`], the gateway waits for the outcome. It answers
//!   [`Outcome::Recorded`] (record id, chain index, digest), or
//!   [`PublishError::Rejected`] with a typed [`Reason`]: `SIGNATURE_INVALID`,
//!   `SCHEMA_VALIDATION_FAILED`, `SEQUENCE_REGRESSION` and the rest of CONTRACT §2.
//!
//! # Batches
//!
//! [`NatsPublisher::publish_all`] keeps up to `in_flight` events waiting for their
//! acknowledgement at once and answers each in order. Memory stays bounded by `in_flight`,
//! however long the iterator is.
//!
//! # Features
//!
//! - `nats` (default): [`NatsPublisher`].
//! - `http` (default): [`HttpPublisher`].

mod event;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "nats")]
mod nats;
mod retry;
mod sequence;

pub use atp_core::reason::Reason;
pub use event::{AuditEvent, BuildError, Producer, SignedEvent, Signer, Source};
#[cfg(feature = "http")]
pub use http::{HttpPublisher, Outcome, Recorded};
#[cfg(feature = "nats")]
pub use nats::{NatsPublisher, Receipt};
pub use retry::Retry;
pub use sequence::{SequenceError, Sequencer};

/// Why an event was not sent, or not taken.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// ATP refused the event (a rejection, CONTRACT §2). Sending it again changes nothing:
    /// fix what `detail` names.
    #[error("rejected, {reason}: {detail}")]
    Rejected { reason: Reason, detail: String },
    /// The gateway refused the request itself: the token (401, 403), the body (413) or an
    /// answer this SDK does not know.
    #[error("refused ({status} {code}): {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// More bytes than the server takes in one message.
    #[error("too large: {0}")]
    TooLarge(String),
    /// No acknowledgement within the retries: ATP or the network is down. The event may or
    /// may not be durable; send the same [`SignedEvent`] again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The publisher's own configuration: a seed file, a TLS setting.
    #[error("configuration: {0}")]
    Config(String),
    /// An answer this SDK could not read.
    #[error("protocol: {0}")]
    Protocol(String),
}
