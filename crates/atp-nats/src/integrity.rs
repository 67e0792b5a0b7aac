//! Publishing and reading what the integrity worker produces: signed checkpoints on
//! `atp.checkpoint.<tenant>.<source>` (ATP_CHECKPOINTS) and alerts on
//! `atp.alert.integrity.<tenant>.<source>` (ATP_ALERTS).

use crate::headers::Headers;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::context::PublishAckFuture;
use atp_core::PartitionKey;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{streams, subjects};

/// On a checkpoint message: the id of the key that signed it.
pub const KEY_ID: &str = "Atp-Key-Id";
/// On a checkpoint message: the tree size it commits to.
pub const TREE_SIZE: &str = "Atp-Tree-Size";

#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct PublishError {
    what: String,
    reason: String,
}

/// Publishes a signed checkpoint; the returned future resolves once JetStream stored it.
/// `Nats-Msg-Id` is `<tenant>:<source>:<size>`, so a checkpoint issued twice (a retry, a
/// second worker) is stored once inside the duplicate window.
pub async fn publish_checkpoint(
    js: &Context,
    p: &PartitionKey,
    size: u64,
    kid: &str,
    note: &str,
) -> Result<PublishAckFuture, PublishError> {
    let mut headers = Headers::new();
    // Partition keys are checked names and sizes numbers; the key id is ATP's own.
    headers
        .text(crate::headers::MSG_ID, &format!("{p}:{size}"))
        .and_then(|h| h.text(KEY_ID, kid))
        .map_err(|e| PublishError {
            what: format!("checkpoint {p}@{size}"),
            reason: e.to_string(),
        })?;
    headers
        .num(TREE_SIZE, size)
        .fixed(crate::headers::CONTENT_TYPE, "text/plain; charset=utf-8");
    js.publish_with_headers(
        subjects::checkpoint(p),
        headers.into_map(),
        note.to_owned().into(),
    )
    .await
    .map_err(|e| PublishError {
        what: format!("checkpoint {p}@{size}"),
        reason: e.to_string(),
    })
}

/// An integrity alert: what the integrity worker found, naming the partition and chain index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `GAP`, `REORDER`, `CHAIN_BROKEN`, `WRONG_PARTITION` or `MALFORMED`.
    pub kind: String,
    pub tenant_id: String,
    pub source_id: String,
    /// Where the next record was expected: the first chain index not in the verified log.
    pub chain_index: u64,
    /// The ATP_LEDGER sequence of the offending message.
    pub ledger_seq: u64,
    pub detail: String,
    pub detected_at: String,
}

/// Publishes an alert and waits until it is stored. The message id makes a re-published alert
/// (a retried batch) land once.
pub async fn publish_alert(
    js: &Context,
    p: &PartitionKey,
    alert: &Alert,
) -> Result<(), PublishError> {
    let err = |reason: String| PublishError {
        what: format!("alert for {p}"),
        reason,
    };
    let mut headers = Headers::new();
    headers
        .text(
            crate::headers::MSG_ID,
            &format!("{p}:{}:{}", alert.ledger_seq, alert.kind),
        )
        .map_err(|e| err(e.to_string()))?;
    let body = serde_json::to_vec(alert).map_err(|e| err(e.to_string()))?;
    js.publish_with_headers(
        subjects::alert_integrity(p),
        headers.into_map(),
        body.into(),
    )
    .await
    .map_err(|e| err(e.to_string()))?
    .await
    .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Feeds every message of one subject of `stream` to `each`, oldest first, and stops at the
/// subject's last message at the time of the call (or when `each` fails). Streams: memory
/// stays flat however long the subject is. Returns how many messages were read.
pub async fn for_each_message(
    js: &Context,
    stream: &str,
    subject: String,
    mut each: impl FnMut(async_nats::jetstream::Message) -> Result<(), String>,
) -> Result<u64, PublishError> {
    let err = |reason: String| PublishError {
        what: format!("reading {subject}"),
        reason,
    };
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut consumer = s
        .create_consumer(OrderedConfig {
            filter_subjects: vec![subject.clone()],
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| err(e.to_string()))?
        .num_pending;
    if pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer.messages().await.map_err(|e| err(e.to_string()))?;
    let mut read = 0;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| err(e.to_string()))?;
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        each(m).map_err(err)?;
        read += 1;
        if pending == 0 {
            break;
        }
    }
    Ok(read)
}

/// Every checkpoint note of a partition, oldest first.
pub async fn checkpoints(js: &Context, p: &PartitionKey) -> Result<Vec<String>, PublishError> {
    let mut notes = Vec::new();
    for_each_message(js, streams::CHECKPOINTS, subjects::checkpoint(p), |m| {
        notes.push(String::from_utf8_lossy(&m.payload).into_owned());
        Ok(())
    })
    .await?;
    Ok(notes)
}
