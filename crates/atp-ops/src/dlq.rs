//! Replaying dead letters once the cause is fixed (`atp dlq replay`, the admin API). How a role
//! gives up on a message is `atp_runtime::dead_letter`; this crate links none of the roles.
//!
//! Replays are idempotent: projecting a message inserts a row keyed by ids inside it (a row
//! already there is left alone), and a failed export is re-queued under an export id derived
//! from the letter, so asking twice queues it once. Each replay is recorded beside its letter
//! (who, when, what happened), and a letter replayed successfully is not replayed again.

use async_nats::jetstream::Context;
use atp_core::TenantId;
use atp_core::deadletter::{DeadLetter, DeadRole};
use atp_core::producer::AdminAction;
use atp_nats::dlq::{self, Entry, Replay};
use atp_nats::exports::ExportEvent;
use atp_nats::streams;
use atp_store::exports::{self, ExportRequest};
use atp_store::projection::NoClearance;
use atp_store::projection::{self, RecordRow, RejectionRow, Target};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use atp_core::deadletter::EXPORT_ATTEMPTS_EXHAUSTED;

/// What a replay of one letter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ReplayOutcome")]
pub enum Outcome {
    /// The message is handled now.
    Replayed,
    /// It still cannot be; the letter stays open.
    Failed,
    /// An earlier replay handled it.
    AlreadyReplayed,
    /// `--dry-run`: it would be handled (nothing was written).
    WouldReplay,
}

/// One letter's replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ReplayResult")]
pub struct Replayed {
    pub seq: u64,
    pub outcome: Outcome,
    pub detail: String,
}

/// Replays one letter on behalf of `by`; with `dry_run`, checks it would succeed and writes
/// nothing (a projection is tried inside a transaction that is rolled back).
pub async fn replay(
    js: &Context,
    pool: &PgPool,
    entry: &Entry,
    by: &str,
    dry_run: bool,
) -> Result<Replayed, dlq::DlqError> {
    let done = |outcome, detail: String| Replayed {
        seq: entry.seq,
        outcome,
        detail,
    };
    if let Some(r) = entry.replay.as_ref().filter(|r| r.succeeded()) {
        return Ok(done(
            Outcome::AlreadyReplayed,
            format!("replayed by {} at {}: {}", r.by, r.at, r.detail),
        ));
    }
    let letter = &entry.letter;
    let attempt = match letter.role {
        DeadRole::Projector => project(js, pool, letter, dry_run).await,
        DeadRole::Exporter => requeue(js, pool, entry, by, dry_run).await,
    };
    let result = match attempt {
        Ok(detail) if dry_run => done(Outcome::WouldReplay, detail),
        Ok(detail) => done(Outcome::Replayed, detail),
        Err(detail) => done(Outcome::Failed, detail),
    };
    if !dry_run {
        let record = Replay {
            outcome: match result.outcome {
                Outcome::Replayed => "replayed",
                _ => "failed",
            }
            .to_owned(),
            detail: result.detail.clone(),
            by: by.to_owned(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        dlq::record_replay(js, entry.seq, &record).await?;
        // The replay is an admin action on the letter's tenant: it goes on its admin trail.
        let tenant = TenantId::new(letter.tenant_id.as_str())
            .map_err(|e| dlq::DlqError::Unavailable(e.to_string()))?;
        let mut attributes = serde_json::Map::new();
        attributes.insert("role".into(), letter.role.as_str().into());
        attributes.insert("code".into(), letter.code.clone().into());
        attributes.insert("stream".into(), letter.stream.clone().into());
        attributes.insert("streamSeq".into(), letter.stream_seq.into());
        attributes.insert("outcome".into(), record.outcome.clone().into());
        let seq = entry.seq.to_string();
        let action = AdminAction {
            actor: by,
            action: "DEAD_LETTER_REPLAYED",
            resource_type: "dead-letter",
            resource_id: &seq,
            attributes,
        };
        atp_nats::admin_trail::record(js, &tenant, &action)
            .await
            .map_err(|e| dlq::DlqError::Unavailable(e.to_string()))?;
        tracing::info!(
            dlq_seq = entry.seq,
            role = letter.role.as_str(),
            tenant.id = %letter.tenant_id,
            by,
            outcome = %record.outcome,
            detail = %record.detail,
            "dead letter replayed"
        );
    }
    Ok(result)
}

/// The message a letter names, refusing one that is no longer the bytes that failed.
async fn original(js: &Context, letter: &DeadLetter) -> Result<ReadMessage, String> {
    let (payload, headers) = dlq::original(js, letter).await.map_err(|e| e.to_string())?;
    if !letter.matches(&payload) {
        return Err(format!(
            "{} message {} no longer has the digest the letter recorded",
            letter.stream, letter.stream_seq
        ));
    }
    Ok(ReadMessage { payload, headers })
}

struct ReadMessage {
    payload: bytes::Bytes,
    headers: Option<async_nats::HeaderMap>,
}

async fn project(
    js: &Context,
    pool: &PgPool,
    letter: &DeadLetter,
    dry_run: bool,
) -> Result<String, String> {
    let m = original(js, letter).await?;
    let seq = letter.stream_seq;
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let (into, inserted) = match letter.stream.as_str() {
        streams::LEDGER => {
            let ingress_seq = m
                .headers
                .as_ref()
                .and_then(|h| h.get(atp_nats::headers::INGRESS_SEQ))
                .and_then(|v| v.as_str().parse().ok());
            // A dead-letter replay holds no subject keys: a record with sealed values would be
            // projected as if erased. `atp replay --tenant` rebuilds it with the keys.
            if !atp_core::privacy::sealed_values(
                &atp_core::record::open(&m.payload, false)
                    .ok()
                    .and_then(|o| o.record.event.get("data").cloned())
                    .unwrap_or_default(),
            )
            .is_empty()
            {
                return Err(
                    "the record seals personal values, which a dead-letter replay cannot \
                     open: rebuild its tenant with `atp replay --tenant <tenant>`"
                        .to_owned(),
                );
            }
            let row = RecordRow::from_ledger(&m.payload, seq, ingress_seq, &NoClearance)
                .map_err(|e| e.to_string())?;
            let n =
                projection::insert_records(&mut tx, Target::Live, std::slice::from_ref(&row)).await;
            (projection::RECORDS, n)
        }
        streams::REJECTED => {
            let row = RejectionRow::from_stream(&m.payload, seq).map_err(|e| e.to_string())?;
            let n = projection::insert_rejections(&mut tx, std::slice::from_ref(&row)).await;
            (projection::REJECTIONS, n)
        }
        other => return Err(format!("no projection reads {other}")),
    };
    let n = inserted.map_err(|e| e.to_string())?;
    if dry_run {
        tx.rollback().await.map_err(|e| e.to_string())?;
    } else {
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(match (dry_run, n) {
        (true, _) => format!("the row for {seq} can be projected into {into}"),
        (false, 0) => format!("{into} already held the row for {seq}"),
        (false, _) => format!("projected {seq} into {into}"),
    })
}

async fn requeue(
    js: &Context,
    pool: &PgPool,
    entry: &Entry,
    by: &str,
    dry_run: bool,
) -> Result<String, String> {
    let letter = &entry.letter;
    if letter.code != EXPORT_ATTEMPTS_EXHAUSTED {
        return Err(format!(
            "a {} letter cannot be replayed: the request itself is unusable",
            letter.code
        ));
    }
    let m = original(js, letter).await?;
    let mut req: ExportRequest =
        serde_json::from_slice(&m.payload).map_err(|e| format!("the request: {e}"))?;
    let failed = std::mem::take(&mut req.export_id);
    req.export_id = replay_export_id(&failed, entry.seq);
    req.requested_at = chrono::Utc::now();
    req.requested_by = format!("{by} (replay of export {failed})");
    if dry_run {
        return Ok(format!(
            "export {failed}'s selection would be queued as export {}",
            req.export_id
        ));
    }
    let tenant = TenantId::new(&req.tenant_id).map_err(|e| e.to_string())?;
    let lock = exports::lock_tenant(pool, &req.tenant_id)
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    atp_nats::exports::publish(
        js,
        ExportEvent::Requested,
        &tenant,
        &req.export_id,
        body,
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    lock.admit(&req).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "export {failed}'s selection is queued as export {}",
        req.export_id
    ))
}

/// A ULID-shaped export id that is the same for every replay of the same letter, so a replay
/// interrupted and asked again queues one export.
fn replay_export_id(failed: &str, letter_seq: u64) -> String {
    let digest = Sha256::digest(format!("{failed}:{letter_seq}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    ulid::Ulid::from_bytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_export_gets_one_id_per_letter() {
        let a = replay_export_id("01JD0000000000000000000000", 7);
        assert_eq!(a, replay_export_id("01JD0000000000000000000000", 7));
        assert_ne!(a, replay_export_id("01JD0000000000000000000000", 8));
        assert_eq!(a.len(), 26);
        assert!(a.parse::<ulid::Ulid>().is_ok());
    }
}
