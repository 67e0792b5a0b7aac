//! How far behind ingest is: read from the resume hints ingest keeps in `ATP_INGEST`
//! (`progress.<shard>`), against ATP_INGRESS's last sequence.
//!
//! A hint is written at most every 250 ms while ingest works and as soon as it falls idle, so
//! a hint older than that behind a stream that has grown means ingest has not moved since the
//! hint's time. That age is the lag: it grows while ingest is stalled, whatever the reason,
//! and is measured by whoever asks (the gateway at scrape time), not by ingest itself, so a
//! wedged ingest cannot hide it.

use async_nats::jetstream::Context;
use futures::StreamExt as _;

use crate::streams::{INGEST_BUCKET, INGRESS};

/// Prefix of the keys of ingest's resume hints, one per shard.
pub const HINT_PREFIX: &str = "progress.";

/// Seconds the most-behind ingest shard has not moved while ATP_INGRESS holds messages past
/// its position: 0 when every shard is caught up (or ATP_INGRESS is empty); `None` when no
/// ingest has stored a hint yet (the figure's reader may not read producers' messages, so the
/// age of a waiting message cannot stand in).
pub async fn ingest_lag(js: &Context) -> Result<Option<f64>, String> {
    let mut stream = js.get_stream(INGRESS).await.map_err(|e| e.to_string())?;
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    if last == 0 {
        return Ok(Some(0.0));
    }
    let kv = js
        .get_key_value(INGEST_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
    let now = time::OffsetDateTime::now_utc();
    let mut lag: Option<f64> = None;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        if !key.starts_with(HINT_PREFIX) {
            continue;
        }
        let Some(entry) = kv.entry(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let seq: u64 = String::from_utf8_lossy(&entry.value).parse().unwrap_or(0);
        let behind = if seq >= last {
            0.0
        } else {
            (now - entry.created).as_seconds_f64().max(0.0)
        };
        lag = Some(lag.map_or(behind, |l: f64| l.max(behind)));
    }
    Ok(lag)
}
