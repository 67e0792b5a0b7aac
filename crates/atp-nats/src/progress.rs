//! How far behind ingest is, and how full ATP_INGRESS is: read from the resume hints ingest
//! keeps in `ATP_INGEST`, against what ATP_INGRESS still holds.
//!
//! Ingest reads ATP_INGRESS in lanes (ADR 0017): one per tenant, whose hint is
//! `lane.<shard>.<tenant>` (every message of the tenant at or below it is handled), and one for
//! every other message, whose hint is `progress.<shard>`. Ingest trims what it has handled from
//! the stream, so a tenant's messages left in it are, but for the last fraction of a second,
//! the ones still waiting.
//!
//! The lag is the age of the oldest submission still waiting, over all tenants. It is measured
//! by whoever asks (the gateway at scrape time), not by ingest itself, so a wedged ingest
//! cannot hide it; and it grows with a backlog as much as with a stall.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::Context;
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::StreamExt as _;

use crate::streams::{INGEST_BUCKET, INGRESS};

/// Prefix of the keys of the rest lane's resume hints, one per shard.
pub const HINT_PREFIX: &str = "progress.";
/// Prefix of the keys of the tenant lanes' resume hints, one per shard and tenant.
pub const LANE_PREFIX: &str = "lane.";

/// The rest lane's hint key for a shard (`progress.0-of-1`).
pub fn rest_key(shard: &str) -> String {
    format!("{HINT_PREFIX}{shard}")
}

/// A tenant lane's hint key (`lane.0-of-1.acme`).
pub fn lane_key(shard: &str, tenant: &str) -> String {
    format!("{LANE_PREFIX}{shard}.{tenant}")
}

/// The tenant of a lane key, when `key` is one of `shard`'s.
pub fn lane_tenant<'k>(shard: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix(LANE_PREFIX)?
        .strip_prefix(shard)?
        .strip_prefix('.')
}

/// What `/metrics` says about ingress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngressState {
    /// Seconds the oldest waiting submission has waited (0 when none waits); `None` when no
    /// ingest has stored a hint yet and submissions wait.
    pub lag: Option<f64>,
    /// How near ATP_INGRESS is to refusing publishes: the larger of its bytes over its byte
    /// limit and its fullest subject's messages over the per-subject limit (0..=1).
    pub fill: f64,
}

/// Reads the figures. Costs one stream info (with per-subject counts), one KV listing, and one
/// direct get per tenant that has messages waiting.
pub async fn ingress_state(js: &Context) -> Result<IngressState, String> {
    let stream = js.get_stream(INGRESS).await.map_err(|e| e.to_string())?;
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    let mut per_tenant: BTreeMap<String, u64> = BTreeMap::new();
    let mut fullest = 0u64;
    if info.state.messages > 0 {
        let mut subjects = stream
            .info_with_subjects(crate::subjects::all(crate::subjects::INGRESS))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(s) = subjects.next().await {
            let (subject, count) = s.map_err(|e| e.to_string())?;
            let Some((tenant, _)) = crate::subjects::tokens_of(crate::subjects::INGRESS, &subject)
            else {
                continue;
            };
            let count = count as u64;
            fullest = fullest.max(count);
            *per_tenant.entry(tenant.to_owned()).or_default() += count;
        }
    }
    let ratio = |used: u64, limit: i64| {
        u64::try_from(limit)
            .ok()
            .filter(|l| *l > 0)
            .map_or(0.0, |l| used as f64 / l as f64)
    };
    let fill = ratio(info.state.bytes, info.config.max_bytes)
        .max(ratio(fullest, info.config.max_messages_per_subject));

    let hints = hints(js).await?;
    let mut lag: Option<f64> = if per_tenant.is_empty() {
        Some(0.0)
    } else {
        None
    };
    let now = time::OffsetDateTime::now_utc();
    for tenant in per_tenant.keys() {
        // Handled up to: the lowest of the tenant's lane hints over the shards, else the rest
        // lane's lowest. None: no ingest has ever said where it is.
        let handled = hints.lanes.get(tenant.as_str()).copied().or(hints.rest);
        let Some(handled) = handled else { continue };
        let filter = crate::subjects::render(crate::subjects::INGRESS, tenant, "*");
        let waited = match stream
            .direct_get_next_for_subject(filter, Some(handled + 1))
            .await
        {
            Ok(m) => (now - m.time).as_seconds_f64().max(0.0),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => 0.0,
            Err(e) => return Err(e.to_string()),
        };
        lag = Some(lag.map_or(waited, |l: f64| l.max(waited)));
    }
    Ok(IngressState { lag, fill })
}

/// The lowest hint per tenant lane and of the rest lanes, over every shard.
struct Hints {
    lanes: HashMap<String, u64>,
    rest: Option<u64>,
}

async fn hints(js: &Context) -> Result<Hints, String> {
    let kv = js
        .get_key_value(INGEST_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
    let mut out = Hints {
        lanes: HashMap::new(),
        rest: None,
    };
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        let lane = key
            .strip_prefix(LANE_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .map(|(_, tenant)| tenant.to_owned());
        if lane.is_none() && !key.starts_with(HINT_PREFIX) {
            continue;
        }
        let Some(value) = kv.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let seq: u64 = String::from_utf8_lossy(&value).parse().unwrap_or(0);
        let slot = match lane {
            Some(tenant) => out.lanes.entry(tenant).or_insert(u64::MAX),
            None => out.rest.get_or_insert(u64::MAX),
        };
        *slot = (*slot).min(seq);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_keys_name_their_shard_and_tenant() {
        assert_eq!(rest_key("0-of-1"), "progress.0-of-1");
        let key = lane_key("1-of-2", "acme");
        assert_eq!(key, "lane.1-of-2.acme");
        assert_eq!(lane_tenant("1-of-2", &key), Some("acme"));
        assert_eq!(lane_tenant("0-of-2", &key), None);
        assert_eq!(lane_tenant("1-of-2", "progress.1-of-2"), None);
    }
}
