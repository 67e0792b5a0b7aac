//! Atomic, fork-free appends to one subject (ADR-50 atomic batch publish, nats-server >= 2.12).
//!
//! A batch of up to [`MAX_BATCH`] messages for one partition is stored whole or not at all. The
//! first message carries `Nats-Expected-Last-Subject-Sequence`: the server checks it under lock
//! at commit, so a second writer that raced us onto the same partition gets
//! [`AppendError::WrongLastSequence`] and nothing of its batch is stored. That is how two
//! ingest workers on the same partition can never fork a chain.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;

/// The server's limit on messages in one atomic batch (ADR-50).
pub const MAX_BATCH: usize = 1000;
/// Non-final messages are sent without waiting, except every this many, which go as requests
/// so a batch the server dropped (e.g. over its in-flight limit) fails fast instead of at the
/// commit's timeout.
const CONFIRM_EVERY: usize = 250;

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub headers: HeaderMap,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone else appended to the subject since we read its tail: reload and re-plan.
    #[error("the subject moved on since its tail was read (another writer appended)")]
    WrongLastSequence,
    #[error("batch of {0} messages is over the server's limit of {MAX_BATCH}")]
    TooMany(usize),
    #[error("empty batch")]
    Empty,
    /// Transient: the batch is not stored; retry after a backoff.
    #[error("append failed: {0}")]
    Nats(String),
}

impl AppendError {
    fn from_publish(kind: PublishErrorKind, msg: String) -> Self {
        match kind {
            PublishErrorKind::WrongLastSequence => Self::WrongLastSequence,
            _ if msg.contains("10071") || msg.contains("wrong last sequence") => {
                Self::WrongLastSequence
            }
            _ => Self::Nats(msg),
        }
    }
}

/// Appends `msgs` to `subject` atomically. `expected_last` is the stream sequence of the last
/// message on `subject` that the caller built on (0 = the subject has none).
pub async fn publish_atomic(
    js: &Context,
    subject: &str,
    expected_last: u64,
    msgs: Vec<Outgoing>,
) -> Result<PublishAck, AppendError> {
    let n = msgs.len();
    if n == 0 {
        return Err(AppendError::Empty);
    }
    if n > MAX_BATCH {
        return Err(AppendError::TooMany(n));
    }
    let client = js.client();
    let batch_id = ulid::Ulid::generate().to_string();
    for (i, mut m) in msgs.into_iter().enumerate() {
        let seq = i + 1;
        if i == 0 {
            m.headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected_last.to_string().as_str(),
            );
        }
        if n == 1 {
            // A single message needs no batch: expected-sequence alone makes it atomic.
            return publish_and_wait(js, subject, m).await;
        }
        m.headers.insert(NATS_BATCH_ID, batch_id.as_str());
        m.headers
            .insert(NATS_BATCH_SEQUENCE, seq.to_string().as_str());
        if seq == n {
            m.headers.insert(NATS_BATCH_COMMIT, "1");
            return publish_and_wait(js, subject, m).await;
        }
        if seq == 1 || seq % CONFIRM_EVERY == 0 {
            let reply = client
                .request_with_headers(subject.to_owned(), m.headers, m.payload)
                .await
                .map_err(|e| AppendError::Nats(e.to_string()))?;
            if !reply.payload.is_empty() {
                // A non-empty reply to a non-final message is an error pub ack.
                let text = String::from_utf8_lossy(&reply.payload).into_owned();
                return Err(AppendError::from_publish(PublishErrorKind::Other, text));
            }
        } else {
            client
                .publish_with_headers(subject.to_owned(), m.headers, m.payload)
                .await
                .map_err(|e| AppendError::Nats(e.to_string()))?;
        }
    }
    Err(AppendError::Empty)
}

async fn publish_and_wait(
    js: &Context,
    subject: &str,
    m: Outgoing,
) -> Result<PublishAck, AppendError> {
    let fut = js
        .publish_with_headers(subject.to_owned(), m.headers, m.payload)
        .await
        .map_err(|e| AppendError::from_publish(e.kind(), e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(e)) => Err(AppendError::from_publish(e.kind(), e.to_string())),
        Err(_) => Err(AppendError::Nats(
            "timed out waiting for the commit's ack".to_owned(),
        )),
    }
}
