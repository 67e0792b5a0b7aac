//! Secrets never reach the logs: a whole flow (tokens, a webhook secret, personal data in
//! events, a database password) runs through `atp serve` at DEBUG, and its captured log is
//! scanned for every one of them.

use atp_gateway::Permission;
use atp_tests::*;
use base64::Engine as _;
use serde_json::{Value, json};

#[tokio::test]
async fn no_token_key_password_or_personal_field_is_logged() {
    let stack = Stack::start().await;
    // A role with a password, so the connection string holds a secret.
    let password = format!("pw-{}", ulid::Ulid::generate());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE atp_logged LOGIN SUPERUSER PASSWORD '{password}'"
    )))
    .execute(&stack.pool)
    .await
    .unwrap();
    let (_, rest) = stack.database_url.split_once("://").unwrap();
    let (_, host_db) = rest.split_once('@').unwrap();
    let database_url = format!("postgres://atp_logged:{password}@{host_db}");

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let issuer_public =
        base64::engine::general_purpose::STANDARD.encode(stack.issuer.verifying_key().to_bytes());
    let mut serve = stack.spawn_serve(
        "all",
        &[
            ("ATP_DATABASE_URL", &database_url),
            ("ATP_LISTEN", "127.0.0.1:0"),
            (
                "ATP_TOKEN_KEYS",
                &format!("{}={issuer_public}", atp::dev::ISSUER_KID),
            ),
            ("ATP_LOG", "debug"),
        ],
        &log,
    );
    let base = eventually("the gateway listening", || {
        assert_running(&mut serve, &log);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let addr = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "gateway listening")
            .and_then(|l| l["addr"].as_str().map(str::to_owned));
        async move { addr.map(|a| format!("http://{a}")) }
    })
    .await;
    let http = reqwest::Client::new();
    let producer = stack.token(TENANT, Permission::Producer);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let admin = stack.token(TENANT, Permission::Admin);

    // Personal data in an event, appended through the gateway and directly on NATS.
    let email = "jane.roe.4711@example.com";
    let resp = http
        .post(format!("{base}/api/v1/audit/append"))
        .bearer_auth(&producer)
        .header("prefer", "wait=20")
        .json(&json!({
            "sourceId": SOURCE, "id": "pii-1", "actor": {"id": email, "type": "user"},
            "action": "READ", "resource": {"type": "Invoice", "id": "inv-7"},
            "attributes": {"email": email}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let mut unsigned = stack.event("pii-2");
    unsigned["data"]["actor"]["id"] = json!(email);
    stack.publish(&partition(TENANT, SOURCE), &unsigned).await;
    // A bad token, a query, and a webhook whose secret is shown once.
    let resp = http
        .get(format!("{base}/api/v1/audit/records"))
        .bearer_auth(format!("{auditor}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .get(format!("{base}/api/v1/audit/records?actorId={email}"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set: Value = http
        .put(format!("{base}/api/v1/exports/webhook"))
        .bearer_auth(&admin)
        .json(&json!({ "url": "https://192.0.43.10/atp" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook_secret = set["secret"].as_str().unwrap().to_owned();
    eventually("the unsigned event rejected", || async {
        (stack.rejected_len(&partition(TENANT, SOURCE)).await == 1).then_some(())
    })
    .await;
    serve.start_kill().unwrap();
    serve.wait().await.unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 20,
        "DEBUG logging captured something to scan:\n{text}"
    );
    let producer_key = hex::encode(stack.producer.to_bytes());
    for (what, secret) in [
        ("a producer token", producer.as_str()),
        ("an auditor token", auditor.as_str()),
        ("an admin token", admin.as_str()),
        ("a token's signature", producer.rsplit('.').next().unwrap()),
        ("the webhook secret", webhook_secret.as_str()),
        ("the database password", password.as_str()),
        ("the producer's private key", producer_key.as_str()),
        ("an email address in an event", email),
    ] {
        assert!(!text.contains(secret), "{what} is in the log");
    }
}
