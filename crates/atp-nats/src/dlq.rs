//! Dead letters on ATP_DLQ (`atp.dlq.<role>.<tenant>`) and their replays in ATP_DLQ_REPLAYS.
//!
//! A letter is published once per failed message (its message id is derived from the message's
//! stream and sequence) and never changes. What became of it is kept beside it: one KV entry per
//! letter, keyed by the letter's ATP_DLQ sequence, written by each replay.

use crate::headers::Headers;
use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use atp_core::deadletter::{DeadLetter, DeadRole};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{headers, streams, subjects};

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead-letter queue unavailable: {0}")]
    Unavailable(String),
    #[error("no dead letter {0}")]
    NotFound(u64),
    #[error("dead letter {seq} is unreadable: {reason}")]
    Corrupt { seq: u64, reason: String },
}

fn unavailable(e: impl std::fmt::Display) -> DlqError {
    DlqError::Unavailable(e.to_string())
}

/// Stores a letter and waits for JetStream to have it; returns its ATP_DLQ sequence (the first
/// one's, when the same message was dead-lettered before within the duplicate window).
pub async fn publish(js: &Context, letter: &DeadLetter) -> Result<u64, DlqError> {
    let mut h = Headers::new();
    h.text(headers::MSG_ID, &letter.msg_id())
        .map_err(unavailable)?
        .fixed(headers::CONTENT_TYPE, "application/json");
    let h = h.into_map();
    let body = serde_json::to_vec(letter).map_err(unavailable)?;
    let ack = js
        .publish_with_headers(
            subjects::dlq(letter.role.as_str(), &letter.tenant_id),
            h,
            body.into(),
        )
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    Ok(ack.sequence)
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "DeadLetterReplay")]
pub struct Replay {
    /// `replayed` (the message is handled now) or `failed` (it still cannot be).
    pub outcome: String,
    pub detail: String,
    /// Who asked (the operator's name, or the admin token's subject).
    pub by: String,
    pub at: String,
}

impl Replay {
    pub fn succeeded(&self) -> bool {
        self.outcome == "replayed"
    }
}

/// A letter, where it is, and its last replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "DeadLetterEntry")]
pub struct Entry {
    pub seq: u64,
    pub letter: DeadLetter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
}

/// Which letters to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub role: Option<DeadRole>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// At most this many, oldest first (0: no limit).
    pub limit: usize,
}

impl Filter {
    fn subject(&self) -> String {
        subjects::dlq(
            self.role.map_or("*", DeadRole::as_str),
            self.tenant.as_deref().unwrap_or("*"),
        )
    }

    fn admits(&self, l: &DeadLetter) -> bool {
        let at = DateTime::parse_from_rfc3339(&l.dead_at).map(|t| t.to_utc());
        let after_from = self.from.is_none_or(|f| at.as_ref().is_ok_and(|t| *t >= f));
        let before_to = self.to.is_none_or(|t| at.as_ref().is_ok_and(|a| *a < t));
        after_from && before_to
    }
}

async fn replays(js: &Context) -> Result<Store, DlqError> {
    js.get_key_value(streams::DLQ_REPLAYS_BUCKET)
        .await
        .map_err(unavailable)
}

async fn replay_of(kv: &Store, seq: u64) -> Result<Option<Replay>, DlqError> {
    let Some(bytes) = kv.get(seq.to_string()).await.map_err(unavailable)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| DlqError::Corrupt {
            seq,
            reason: format!("replay record: {e}"),
        })
}

fn letter_of(seq: u64, payload: &[u8]) -> Result<DeadLetter, DlqError> {
    serde_json::from_slice(payload).map_err(|e| DlqError::Corrupt {
        seq,
        reason: e.to_string(),
    })
}

/// Letters matching `filter`, oldest first, each with its last replay.
pub async fn list(js: &Context, filter: &Filter) -> Result<Vec<Entry>, DlqError> {
    let mut letters = Vec::new();
    crate::integrity::for_each_message(js, streams::DLQ, filter.subject(), |m| {
        let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
        let letter = letter_of(seq, &m.payload).map_err(|e| e.to_string())?;
        if filter.admits(&letter) && (filter.limit == 0 || letters.len() < filter.limit) {
            letters.push((seq, letter));
        }
        Ok(())
    })
    .await
    .map_err(unavailable)?;
    let kv = replays(js).await?;
    let mut out = Vec::with_capacity(letters.len());
    for (seq, letter) in letters {
        let replay = replay_of(&kv, seq).await?;
        out.push(Entry {
            seq,
            letter,
            replay,
        });
    }
    Ok(out)
}

/// One letter by its ATP_DLQ sequence.
pub async fn get(js: &Context, seq: u64) -> Result<Entry, DlqError> {
    if seq == 0 {
        return Err(DlqError::NotFound(seq));
    }
    let stream = js.get_stream(streams::DLQ).await.map_err(unavailable)?;
    let msg = stream.get_raw_message(seq).await.map_err(|e| {
        if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound {
            DlqError::NotFound(seq)
        } else {
            unavailable(e)
        }
    })?;
    let letter = letter_of(seq, &msg.payload)?;
    let replay = replay_of(&replays(js).await?, seq).await?;
    Ok(Entry {
        seq,
        letter,
        replay,
    })
}

/// The message a letter is about, as its stream keeps it: payload and headers.
pub async fn original(
    js: &Context,
    letter: &DeadLetter,
) -> Result<(bytes::Bytes, Option<async_nats::HeaderMap>), DlqError> {
    let stream = js.get_stream(&letter.stream).await.map_err(unavailable)?;
    let msg = stream
        .get_raw_message(letter.stream_seq)
        .await
        .map_err(unavailable)?;
    Ok((msg.payload, Some(msg.headers)))
}

/// Records what a replay of letter `seq` did.
pub async fn record_replay(js: &Context, seq: u64, replay: &Replay) -> Result<(), DlqError> {
    let body = serde_json::to_vec(replay).map_err(unavailable)?;
    replays(js)
        .await?
        .put(seq.to_string(), body.into())
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Letters stored (the DLQ's depth; replayed ones included, as the stream keeps them).
pub async fn depth(js: &Context) -> Result<u64, DlqError> {
    let mut stream = js.get_stream(streams::DLQ).await.map_err(unavailable)?;
    Ok(stream.info().await.map_err(unavailable)?.state.messages)
}
