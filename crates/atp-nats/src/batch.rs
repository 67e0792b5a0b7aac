//! Atomic, fork-free appends (ADR-50 atomic batch publish, nats-server >= 2.12).
//!
//! One batch of up to [`MAX_BATCH`] messages may span many subjects (partitions) of a stream and
//! is stored whole or not at all. The first message of each subject carries
//! `Nats-Expected-Last-Subject-Sequence`; the server checks every expectation under lock at
//! commit, so if any other writer appended to any of those subjects since we read their tails,
//! the whole batch fails with [`AppendError::WrongLastSequence`] and nothing of it is stored.
//! That is how two ingest workers on the same partitions can never fork a chain. (The
//! integration test `batch::a_stale_expectation_on_any_subject_rejects_the_whole_batch` pins
//! this server behaviour.)

use std::time::Duration;

use crate::headers::{
    BATCH_COMMIT, BATCH_ID, BATCH_SEQUENCE, EXPECTED_LAST_SUBJECT_SEQUENCE, Headers,
};
use async_nats::HeaderMap;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;

/// The server's limit on messages in one atomic batch (ADR-50).
pub const MAX_BATCH: usize = 1000;
/// Non-final messages go without waiting, except every this many, which go as requests so a
/// batch the server dropped (e.g. over its in-flight limit) fails fast rather than at the
/// commit's timeout. 250 keeps that to at most three extra round trips per full batch.
const CONFIRM_EVERY: usize = 250;
/// How long to wait for the commit's acknowledgement.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Messages for one subject, built on the subject's last stream sequence as the caller read it
/// (0 = the subject has no message yet).
#[derive(Debug, Clone)]
pub struct Append {
    pub subject: String,
    pub expected_last: u64,
    pub msgs: Vec<Outgoing>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Some subject moved on since its tail was read (another writer appended): re-read, re-plan.
    #[error("a subject moved on since its tail was read (another writer appended)")]
    WrongLastSequence,
    #[error("batch of {0} messages is over the server's limit of {MAX_BATCH}")]
    TooMany(usize),
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

/// Appends every subject's messages in one atomic batch. Returns, per `Append` in order, the
/// stream sequence of its last message (its subject's new tail). Empty appends are skipped and
/// report their `expected_last` unchanged.
pub async fn append_atomic(js: &Context, appends: Vec<Append>) -> Result<Vec<u64>, AppendError> {
    let n: usize = appends.iter().map(|a| a.msgs.len()).sum();
    if n > MAX_BATCH {
        return Err(AppendError::TooMany(n));
    }
    let mut tails: Vec<u64> = appends.iter().map(|a| a.expected_last).collect();
    if n == 0 {
        return Ok(tails);
    }
    // Position (0-based, within the batch) of each append's last message.
    let mut last_pos: Vec<Option<usize>> = Vec::with_capacity(appends.len());
    let mut flat: Vec<(String, Outgoing)> = Vec::with_capacity(n);
    for a in appends {
        let mut first = true;
        for mut m in a.msgs {
            if first {
                let mut h = Headers::from_map(std::mem::take(&mut m.headers));
                h.num(EXPECTED_LAST_SUBJECT_SEQUENCE, a.expected_last);
                m.headers = h.into_map();
                first = false;
            }
            flat.push((a.subject.clone(), m));
        }
        last_pos.push(if first { None } else { Some(flat.len() - 1) });
    }

    let ack = if n == 1 {
        // A single message needs no batch: its expected-sequence alone makes it atomic.
        let (subject, m) = flat.pop().ok_or(AppendError::TooMany(0))?;
        publish_and_wait(js, subject, m).await?
    } else {
        publish_batch(js, flat).await?
    };
    let first_seq = ack.sequence + 1 - n as u64;
    for (tail, pos) in tails.iter_mut().zip(last_pos) {
        if let Some(p) = pos {
            *tail = first_seq + p as u64;
        }
    }
    Ok(tails)
}

async fn publish_batch(
    js: &Context,
    flat: Vec<(String, Outgoing)>,
) -> Result<PublishAck, AppendError> {
    let n = flat.len();
    let client = js.client();
    let batch_id = ulid::Ulid::generate().to_string();
    for (i, (subject, mut m)) in flat.into_iter().enumerate() {
        let seq = i + 1;
        let mut h = Headers::from_map(std::mem::take(&mut m.headers));
        // A ULID: 26 characters of Crockford base32, never refused.
        h.text(BATCH_ID, &batch_id)
            .map_err(|e| AppendError::Nats(e.to_string()))?
            .num(BATCH_SEQUENCE, seq as u64);
        if seq == n {
            h.fixed(BATCH_COMMIT, "1");
            m.headers = h.into_map();
            return publish_and_wait(js, subject, m).await;
        }
        m.headers = h.into_map();
        if seq % CONFIRM_EVERY == 0 {
            let reply = client
                .request_with_headers(subject, m.headers, m.payload)
                .await
                .map_err(|e| AppendError::Nats(e.to_string()))?;
            if !reply.payload.is_empty() {
                // A non-empty reply to a non-final message is an error pub ack.
                let text = String::from_utf8_lossy(&reply.payload).into_owned();
                return Err(AppendError::from_publish(PublishErrorKind::Other, text));
            }
        } else {
            client
                .publish_with_headers(subject, m.headers, m.payload)
                .await
                .map_err(|e| AppendError::Nats(e.to_string()))?;
        }
    }
    Err(AppendError::TooMany(0))
}

async fn publish_and_wait(
    js: &Context,
    subject: String,
    m: Outgoing,
) -> Result<PublishAck, AppendError> {
    let fut = js
        .publish_with_headers(subject, m.headers, m.payload)
        .await
        .map_err(|e| AppendError::from_publish(e.kind(), e.to_string()))?;
    match tokio::time::timeout(COMMIT_TIMEOUT, fut).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(e)) => Err(AppendError::from_publish(e.kind(), e.to_string())),
        Err(_) => Err(AppendError::Nats(
            "timed out waiting for the commit's ack".to_owned(),
        )),
    }
}
