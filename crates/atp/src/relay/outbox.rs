//! `atp relay outbox`: a producer's PostgreSQL outbox table (seed 000's pattern) relayed to ATP.
//!
//! Each undelivered row becomes a signed event: its id is the row's id, its `sequence` the
//! row's order, its time the row's `created_at`. A row is marked delivered only after ATP's
//! ingress stream acknowledged it. A row no event can be made of is forwarded, its columns as
//! JSON, to become an `UNMAPPABLE` rejection (ADR 0024), and marked delivered too.
//!
//! - **A crash anywhere loses nothing.** Rows whose acknowledgement came but whose update did
//!   not are sent again, as the same bytes: Ed25519 is deterministic and every field comes from
//!   the row. ATP answers them as duplicates, never as second records.
//! - **Several relays on one table deliver nothing twice.** One holds a PostgreSQL advisory lock
//!   per (table, tenant, source) and relays; the others wait on the lock and take over within
//!   a second of the holder's connection closing. Only one publisher per source also keeps the
//!   `sequence` order: two publishing at once would race each other into
//!   `SEQUENCE_REGRESSION`.
//! - **Config only names columns.** Table and column names are checked as identifiers and
//!   quoted before they reach SQL.

use std::time::Duration;

use anyhow::Context as _;
use atp_producer::{AuditEvent, NatsPublisher, Producer, Retry, SignedEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection as _, PgConnection, Row as _};
use tokio::sync::watch;

use super::pause;

/// An outbox table that the default [`OutboxMapping`] reads, for a producer to start from
/// (PostgreSQL 13 or later). The benchmarks and tests create exactly this.
pub const EXAMPLE_OUTBOX: &str = r#"
CREATE TABLE outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq bigserial UNIQUE NOT NULL,
    event_type text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    actor_id text,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX outbox_undelivered ON outbox (seq) WHERE delivered_at IS NULL;
"#;

/// Which columns of the outbox table hold what. Each is an identifier (`[a-z_][a-z0-9_]*`);
/// the table may be schema-qualified.
#[derive(Debug, Clone)]
pub struct OutboxMapping {
    pub table: String,
    /// The row's id: the event's CloudEvents `id` (as text).
    pub id: String,
    /// A strictly increasing number (a `bigserial`): the event's `sequence`.
    pub order: String,
    /// The event type (`contact.created`): the CloudEvents `type` after `type_prefix`; its
    /// last dot-separated word gives the action (`created` → `CREATE`).
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Who did it (nullable: `system`).
    pub actor: String,
    /// A JSON object: its members become the event's attributes (nested values as JSON text).
    pub payload: String,
    pub created_at: String,
    /// Null until ATP acknowledged the row.
    pub delivered_at: String,
    pub type_prefix: String,
}

impl Default for OutboxMapping {
    fn default() -> Self {
        let s = |v: &str| v.to_owned();
        OutboxMapping {
            table: s("outbox"),
            id: s("id"),
            order: s("seq"),
            event_type: s("event_type"),
            aggregate_type: s("aggregate_type"),
            aggregate_id: s("aggregate_id"),
            actor: s("actor_id"),
            payload: s("payload"),
            created_at: s("created_at"),
            delivered_at: s("delivered_at"),
            type_prefix: String::new(),
        }
    }
}

/// `name` double-quoted, if it is a plain lower-case identifier (optionally `schema.name` for
/// the table); anything else is refused before it can reach SQL.
fn quoted(name: &str, qualified: bool) -> anyhow::Result<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    anyhow::ensure!(
        (parts.len() == 1 || (qualified && parts.len() == 2)) && parts.iter().all(|p| ok(p)),
        "{name:?} is not a plain identifier ([a-z_][a-z0-9_]*)"
    );
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// The statements a relay runs, built once from a checked mapping.
#[derive(Debug, Clone)]
struct Statements {
    claim: String,
    delivered: String,
}

impl OutboxMapping {
    fn statements(&self) -> anyhow::Result<Statements> {
        let t = quoted(&self.table, true)?;
        let c = |n: &str| quoted(n, false);
        let (id, order, delivered) = (c(&self.id)?, c(&self.order)?, c(&self.delivered_at)?);
        Ok(Statements {
            claim: format!(
                "SELECT {id}::text AS id, {order}::bigint AS seq, {ty}::text AS event_type, \
                 {at}::text AS aggregate_type, {ai}::text AS aggregate_id, {actor}::text AS actor, \
                 {payload}::jsonb AS payload, {created} AS created_at \
                 FROM {t} WHERE {delivered} IS NULL ORDER BY {order} LIMIT $1 \
                 FOR UPDATE SKIP LOCKED",
                ty = c(&self.event_type)?,
                at = c(&self.aggregate_type)?,
                ai = c(&self.aggregate_id)?,
                actor = c(&self.actor)?,
                payload = c(&self.payload)?,
                created = c(&self.created_at)?,
            ),
            delivered: format!(
                "UPDATE {t} SET {delivered} = now() WHERE {order} = ANY($1::bigint[])"
            ),
        })
    }
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    /// The producer's database (kept out of logs).
    pub database_url: String,
    pub mapping: OutboxMapping,
    /// Rows claimed per transaction.
    pub batch: i64,
    /// Events waiting for their acknowledgement at once.
    pub in_flight: usize,
    /// How long an empty outbox is left before it is read again.
    pub poll: Duration,
}

/// One outbox row, as claimed.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub seq: i64,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub actor: Option<String>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// `created` → `CREATE`, `updated` → `UPDATE`, `deleted` → `DELETE`; any other last word of
/// the type, upper-cased.
pub fn action_of(event_type: &str) -> String {
    let word = event_type.rsplit(['.', '_']).next().unwrap_or(event_type);
    match word {
        "created" | "added" => "CREATE".to_owned(),
        "updated" | "changed" => "UPDATE".to_owned(),
        "deleted" | "removed" => "DELETE".to_owned(),
        "viewed" | "read" => "READ".to_owned(),
        "exported" => "EXPORT".to_owned(),
        other => other.to_ascii_uppercase(),
    }
}

/// The audit event a row becomes. Every field comes from the row, so the same row always
/// signs into the same bytes.
pub fn event_of(row: &OutboxRow, type_prefix: &str) -> anyhow::Result<AuditEvent> {
    let sequence = u64::try_from(row.seq)
        .ok()
        .filter(|s| *s > 0)
        .with_context(|| format!("row {}: order {} is not a positive number", row.id, row.seq))?;
    let mut ev = AuditEvent::new(format!("{type_prefix}{}", row.event_type))
        .id(&row.id)
        .time(row.created_at)
        .sequence(sequence)
        .actor(row.actor.as_deref().unwrap_or("system"), "user")
        .action(action_of(&row.event_type))
        .resource(&row.aggregate_type, &row.aggregate_id)
        .attribute("outboxType", row.event_type.as_str());
    match &row.payload {
        Value::Object(members) => {
            for (name, value) in members {
                let flat = match value {
                    Value::Object(_) | Value::Array(_) => Value::String(value.to_string()),
                    scalar => scalar.clone(),
                };
                ev = ev.attribute(name, flat);
            }
        }
        Value::Null => {}
        other => ev = ev.attribute("payload", other.to_string()),
    }
    Ok(ev)
}

/// Relays until `shutdown` turns true: waits to be the one relay of this source, then claims,
/// publishes and marks rows, batch after batch.
pub async fn run_outbox(
    relay: OutboxRelay,
    producer: Producer,
    nats: NatsPublisher,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let statements = relay.mapping.statements()?;
    let nats = nats.retry(Retry {
        attempts: 3,
        ..Retry::default()
    });
    let lock_key = format!(
        "atp-relay-outbox:{}:{}:{}",
        relay.mapping.table,
        producer.source().tenant(),
        producer.source().source()
    );
    let mut failures = 0u32;
    while !*shutdown.borrow() {
        let mut conn = match PgConnection::connect(&relay.database_url).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the outbox database; retrying");
                pause(&mut shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        // One relay per source: the advisory lock lives as long as this connection.
        let leader: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&lock_key)
                .fetch_one(&mut conn)
                .await
                .unwrap_or(false);
        if !leader {
            drop(conn);
            pause(&mut shutdown, Duration::from_secs(1)).await;
            continue;
        }
        tracing::info!(source = %producer.source().partition(), "relaying the outbox");
        while !*shutdown.borrow() {
            match relay_batch(&mut conn, &statements, &relay, &producer, &nats).await {
                Ok(0) => {
                    failures = 0;
                    pause(&mut shutdown, relay.poll).await;
                }
                Ok(n) => {
                    failures = 0;
                    tracing::debug!(rows = n, "relayed");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %format!("{e:#}"), failures, "a batch was not relayed; it is claimed again");
                    let wait = Retry::default()
                        .backoff(failures)
                        .max(Duration::from_millis(50));
                    pause(&mut shutdown, wait).await;
                    if conn.ping().await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Claims up to a batch of rows, publishes them and marks them delivered, in one transaction:
/// the number of rows relayed. A row that cannot be made an event (a non-positive order, a
/// type or id ATP refuses) is forwarded as received, its columns as JSON, to become an
/// `UNMAPPABLE` rejection (ADR 0024), and is marked delivered like the others: it neither
/// stops the outbox nor disappears.
async fn relay_batch(
    conn: &mut PgConnection,
    statements: &Statements,
    relay: &OutboxRelay,
    producer: &Producer,
    nats: &NatsPublisher,
) -> anyhow::Result<usize> {
    let mut tx = conn.begin().await?;
    // Identifiers checked and quoted by `OutboxMapping::statements`; values are bound.
    let rows = sqlx::query(sqlx::AssertSqlSafe(statements.claim.clone()))
        .bind(relay.batch)
        .fetch_all(&mut *tx)
        .await
        .context("claiming outbox rows")?;
    let mut signed: Vec<(i64, SignedEvent)> = Vec::with_capacity(rows.len());
    let mut unmappable = None;
    for r in &rows {
        let row = OutboxRow {
            id: r.try_get("id")?,
            seq: r.try_get("seq")?,
            event_type: r.try_get("event_type")?,
            aggregate_type: r.try_get("aggregate_type")?,
            aggregate_id: r.try_get("aggregate_id")?,
            actor: r.try_get("actor")?,
            payload: r.try_get("payload")?,
            created_at: r.try_get("created_at")?,
        };
        match event_of(&row, &relay.mapping.type_prefix).and_then(|e| Ok(producer.sign(e)?)) {
            Ok(s) => signed.push((row.seq, s)),
            Err(e) => {
                // Rows after it wait for the next batch, so that order holds.
                unmappable = Some((row, e));
                break;
            }
        }
    }
    let mut orders: Vec<i64> = signed.iter().map(|(o, _)| *o).collect();
    let results = nats
        .publish_all(signed.into_iter().map(|(_, s)| s), relay.in_flight)
        .await;
    // Only an unbroken acknowledged prefix is marked: the rest is claimed again, in order.
    let acked = results.iter().take_while(|r| r.is_ok()).count();
    count("event", acked);
    orders.truncate(acked);
    let mut failure = results.into_iter().nth(acked).and_then(Result::err);
    if failure.is_none()
        && let Some((row, why)) = unmappable
    {
        let message = serde_json::json!({
            "id": row.id, "order": row.seq, "eventType": row.event_type,
            "aggregateType": row.aggregate_type, "aggregateId": row.aggregate_id,
            "actor": row.actor, "payload": row.payload, "createdAt": row.created_at,
        });
        let message_id = format!("outbox:{}:{}", relay.mapping.table, row.id);
        match nats
            .publish_unmappable(
                message.to_string().as_bytes(),
                &format!("{why:#}"),
                &message_id,
            )
            .await
        {
            Ok(_) => {
                tracing::warn!(row = %row.id, error = %format!("{why:#}"), "a row that cannot be an event was forwarded as UNMAPPABLE");
                count("unmappable", 1);
                orders.push(row.seq);
            }
            Err(e) => failure = Some(e),
        }
    }
    if !orders.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(statements.delivered.clone()))
            .bind(&orders)
            .execute(&mut *tx)
            .await
            .context("marking rows delivered")?;
    }
    tx.commit().await?;
    if let Some(e) = failure {
        return Err(e).context("publishing to ATP");
    }
    Ok(orders.len())
}

fn count(outcome: &'static str, n: usize) {
    atp_telemetry::metrics::metrics().relay_messages.add(
        n as u64,
        &[
            atp_telemetry::metrics::label("relay", "outbox"),
            atp_telemetry::metrics::label("outcome", outcome),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_reach_sql() {
        assert_eq!(quoted("outbox", true).unwrap(), "\"outbox\"");
        assert_eq!(quoted("crm.outbox", true).unwrap(), "\"crm\".\"outbox\"");
        for bad in [
            "",
            "Outbox",
            "a;drop table x",
            "a\"b",
            "1abc",
            "a.b.c",
            "a b",
            "x--",
        ] {
            assert!(quoted(bad, true).is_err(), "{bad}");
        }
        assert!(
            quoted("crm.outbox", false).is_err(),
            "a column is not qualified"
        );
        let m = OutboxMapping {
            payload: "payload); DELETE FROM outbox; --".to_owned(),
            ..OutboxMapping::default()
        };
        assert!(m.statements().is_err());
    }

    #[test]
    fn a_row_becomes_the_same_event_every_time() {
        let row = OutboxRow {
            id: "7f1c".to_owned(),
            seq: 42,
            event_type: "contact.updated".to_owned(),
            aggregate_type: "contact".to_owned(),
            aggregate_id: "c-9".to_owned(),
            actor: None,
            payload: serde_json::json!({"field": "email", "old": {"a": 1}, "n": 3}),
            created_at: "2026-12-07T10:00:00.123Z".parse().unwrap(),
        };
        let a = event_of(&row, "com.acme.crm.").unwrap();
        assert_eq!(a, event_of(&row, "com.acme.crm.").unwrap());
        let mut bad = row.clone();
        bad.seq = 0;
        assert!(event_of(&bad, "").is_err());
        assert_eq!(action_of("contact.created"), "CREATE");
        assert_eq!(action_of("note_deleted"), "DELETE");
        assert_eq!(action_of("export.downloaded"), "DOWNLOADED");
    }
}
