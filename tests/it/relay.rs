//! `atp relay outbox` against a real PostgreSQL holding a CRM shaped after seed 000 (contacts,
//! notes, exports, and the outbox its business transactions write to), run as separate
//! processes that are killed with SIGKILL: every row becomes exactly one record, in order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use atp_tests::*;
use sqlx::PgPool;

/// The CRM's own tables; each transaction also writes to the outbox
/// (`atp::relay::EXAMPLE_OUTBOX`).
const CRM_SCHEMA: &str = r#"
CREATE TABLE contacts (id text PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE notes (id text PRIMARY KEY, contact_id text NOT NULL REFERENCES contacts (id), body text NOT NULL);
CREATE TABLE exports (id text PRIMARY KEY, requested_by text NOT NULL, row_count int NOT NULL);
"#;

struct Crm {
    pool: PgPool,
    url: String,
}

async fn crm(stack: &Stack) -> Crm {
    let url = stack.pg.create_database("crm").await.unwrap();
    let pool = atp_store::connect(&url, 4).await.unwrap();
    for ddl in [CRM_SCHEMA, atp::relay::EXAMPLE_OUTBOX] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&pool)
            .await
            .unwrap();
    }
    Crm { pool, url }
}

impl Crm {
    /// Business transactions `from..to`: a contact created, a note on it, and every tenth an
    /// export; each writes its outbox row in the same transaction.
    async fn work(&self, from: u32, to: u32) {
        for n in from..to {
            let mut tx = self.pool.begin().await.unwrap();
            let (contact, note) = (format!("c-{n}"), format!("n-{n}"));
            sqlx::query("INSERT INTO contacts (id, name, email) VALUES ($1, $2, $3)")
                .bind(&contact)
                .bind(format!("Contact {n}"))
                .bind(format!("contact{n}@example.com"))
                .execute(&mut *tx)
                .await
                .unwrap();
            outbox(&mut tx, "contact.created", "contact", &contact, n).await;
            sqlx::query("INSERT INTO notes (id, contact_id, body) VALUES ($1, $2, 'called back')")
                .bind(&note)
                .bind(&contact)
                .execute(&mut *tx)
                .await
                .unwrap();
            outbox(&mut tx, "note.created", "note", &note, n).await;
            if n % 10 == 0 {
                let export = format!("x-{n}");
                sqlx::query(
                    "INSERT INTO exports (id, requested_by, row_count) VALUES ($1, 'staff-1', $2)",
                )
                .bind(&export)
                .bind(n as i32)
                .execute(&mut *tx)
                .await
                .unwrap();
                outbox(&mut tx, "export.requested", "export", &export, n).await;
            }
            tx.commit().await.unwrap();
        }
    }

    async fn rows(&self) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT id::text, seq FROM outbox ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn undelivered(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

async fn outbox(
    tx: &mut sqlx::PgConnection,
    event_type: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    n: u32,
) {
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_type, aggregate_id, actor_id, payload) \
         VALUES ($1, $2, $3, 'staff-1', $4)",
    )
    .bind(event_type)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(serde_json::json!({"n": n, "channel": "web", "changes": {"name": true}}))
    .execute(tx)
    .await
    .unwrap();
}

/// What every relay process of a test shares: the producer's NATS seed and key file.
struct RelayEnv {
    seed: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

async fn relay_env(stack: &Stack) -> RelayEnv {
    let (auth, _) = stack.auth.as_ref().unwrap();
    let (_, seed) =
        atp::admin::add_nats_producer(&stack.nats.url(), auth, &partition(TENANT, SOURCE), None)
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("producer.pem");
    atp::keys::write_private(&key, &stack.producer).unwrap();
    RelayEnv {
        seed,
        key,
        _dir: dir,
    }
}

/// `atp relay outbox` as its own process, connected as the producer's NATS identity.
fn spawn_relay(stack: &Stack, crm: &Crm, env: &RelayEnv, log: &Path) -> tokio::process::Child {
    tokio::process::Command::new(atp_binary())
        .args([
            "relay",
            "outbox",
            "--type-prefix",
            "com.acme.crm.",
            "--batch",
            "100",
        ])
        .env("ATP_NATS_URL", stack.nats.url())
        .env("ATP_NATS_CREDS", &env.seed)
        .env("ATP_OUTBOX_DATABASE_URL", &crm.url)
        .env("ATP_PRODUCER_TENANT", TENANT)
        .env("ATP_PRODUCER_SOURCE", SOURCE)
        .env("ATP_PRODUCER_SOURCE_URI", SOURCE_URI)
        .env("ATP_PRODUCER_KEY", &env.key)
        .env("ATP_PRODUCER_KEY_ID", KEY_ID)
        .env("ATP_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("atp relay outbox starts")
}

/// Every outbox row is exactly one record, in the outbox's order, with nothing refused.
async fn assert_relayed_once_in_order(stack: &Stack, crm: &Crm) {
    let p = partition(TENANT, SOURCE);
    let rows = crm.rows().await;
    let records = eventually("every outbox row on the ledger", || async {
        let r = stack.ledger(&p).await;
        (r.len() >= rows.len()).then_some(r)
    })
    .await;
    assert_eq!(
        stack.verify_chain(&p).await,
        rows.len() as u64,
        "no row twice"
    );
    let ids: Vec<(String, i64)> = records
        .iter()
        .map(|r| {
            (
                r.event["id"].as_str().unwrap().to_owned(),
                r.event["sequence"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids, rows, "the chain holds the outbox's rows in its order");
    assert!(
        stack.rejections(&p).await.is_empty(),
        "nothing refused: {:?}",
        stack.rejections(&p).await
    );
    let types: BTreeSet<&str> = records
        .iter()
        .map(|r| r.event["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "com.acme.crm.contact.created",
            "com.acme.crm.export.requested",
            "com.acme.crm.note.created"
        ])
    );
    eventually("every row marked delivered", || async {
        (crm.undelivered().await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_relays_on_one_outbox_deliver_every_row_once_and_a_killed_one_is_taken_over() {
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let crm = crm(&stack).await;
    let env = relay_env(&stack).await;
    let logs = tempfile::tempdir().unwrap();
    crm.work(0, 100).await;
    let mut a = spawn_relay(&stack, &crm, &env, &logs.path().join("a.log"));
    let mut b = spawn_relay(&stack, &crm, &env, &logs.path().join("b.log"));
    assert_relayed_once_in_order(&stack, &crm).await;

    // SIGKILL one of them while the CRM writes on: the other takes over, nothing is lost.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    crm.work(100, 250).await;
    assert_relayed_once_in_order(&stack, &crm).await;
    b.start_kill().unwrap();
}

#[tokio::test]
async fn a_relay_killed_mid_stream_and_a_nats_restart_lose_and_double_nothing() {
    let mut stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let crm = crm(&stack).await;
    let env = relay_env(&stack).await;
    let logs = tempfile::tempdir().unwrap();
    let p = partition(TENANT, SOURCE);
    crm.work(0, 400).await;
    let mut relay = spawn_relay(&stack, &crm, &env, &logs.path().join("1.log"));
    // Killed with SIGKILL while it relays: some rows acknowledged, perhaps not yet marked.
    eventually("the relay under way", || async {
        (stack.ledger_len(&p).await >= 150).then_some(())
    })
    .await;
    relay.start_kill().unwrap();
    relay.wait().await.unwrap();
    let mut relay = spawn_relay(&stack, &crm, &env, &logs.path().join("2.log"));
    // ATP's side restarts under it too.
    stack.nats.restart().await.expect("nats-server restarts");
    crm.work(400, 500).await;
    assert_relayed_once_in_order(&stack, &crm).await;
    relay.start_kill().unwrap();
}

/// A row no event can be made of (here: no aggregate id, so no resource) is forwarded as an
/// `UNMAPPABLE` rejection holding the row, marked delivered, and the rows behind it flow on.
#[tokio::test]
async fn a_row_that_cannot_be_an_event_becomes_a_rejection_and_the_outbox_flows_on() {
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let crm = crm(&stack).await;
    let env = relay_env(&stack).await;
    let logs = tempfile::tempdir().unwrap();
    crm.work(0, 10).await;
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_type, aggregate_id, payload) \
         VALUES ('contact.merged', 'contact', '', '{\"into\": \"c-1\"}')",
    )
    .execute(&crm.pool)
    .await
    .unwrap();
    crm.work(10, 20).await;
    let mut relay = spawn_relay(&stack, &crm, &env, &logs.path().join("relay.log"));
    let p = partition(TENANT, SOURCE);
    let rejected = eventually("the row refused as UNMAPPABLE", || async {
        stack.rejections(&p).await.into_iter().next()
    })
    .await;
    assert_eq!(rejected.reason, atp_core::Reason::Unmappable);
    assert!(
        rejected.detail.contains("no resource"),
        "{}",
        rejected.detail
    );
    assert_eq!(rejected.event["eventType"], "contact.merged");
    eventually(
        "every other row recorded and every row delivered",
        || async {
            (stack.ledger_len(&p).await == 42 && crm.undelivered().await == 0).then_some(())
        },
    )
    .await;
    assert_eq!(stack.verify_chain(&p).await, 42);
    relay.start_kill().unwrap();
}
