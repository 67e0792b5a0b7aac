//! `POST /api/v1/ingest/webhooks/{sourceId}?tenant=…`: a system that can only call webhooks
//! sends events signed with Standard Webhooks, HMAC (signed here by the Standard Webhooks
//! project's own Rust library) or Ed25519 with the source's producer key; each becomes a
//! record saying how it came in, a retried delivery is the record it already made, and a
//! tampered, stale or foreign one is refused before anything is read from it.

use atp_core::webhook;
use atp_tests::*;
use axum::http::StatusCode;
use serde_json::{Value, json};

struct Sender {
    api: Api,
    path: String,
}

impl Sender {
    /// Posts `body` with the three Standard Webhooks headers.
    async fn post(&self, id: &str, ts: i64, signature: &str, body: &[u8]) -> (StatusCode, Value) {
        let resp = self
            .api
            .http
            .post(format!("{}{}", self.api.base, self.path))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .header("prefer", "wait=20")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Sender {
    /// Posts a delivery that must become a record with this event id, `producer.auth` and
    /// `producer.keyId`; answers the 201's body.
    async fn recorded(
        &self,
        id: &str,
        ts: i64,
        signature: &str,
        body: &[u8],
        auditor: &str,
        [event_id, auth, key_id]: [&str; 3],
    ) -> Value {
        let (status, created) = self.post(id, ts, signature, body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let record_id = created["recordId"].as_str().unwrap();
        let view = self
            .api
            .get_json(&format!("/api/v1/audit/records/{record_id}"), auditor)
            .await;
        let record = &view["record"];
        assert_eq!(record["event"]["id"], event_id);
        assert_eq!(record["producer"]["auth"], auth);
        assert_eq!(record["producer"]["keyId"], key_id);
        created
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn signed_webhooks_become_records_and_anything_else_is_refused() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("gateway,ingest,projector")).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("billing");
    stack.onboard_producer(
        TENANT,
        "billing",
        "https://billing.acme.example",
        "billing-1",
        &out,
        &["--webhook-secret-id", "wh-1"],
    );
    let facts: Value =
        serde_json::from_slice(&std::fs::read(out.join("producer.json")).unwrap()).unwrap();
    let sender = Sender {
        api: Api::new(&running),
        path: facts["webhookPath"].as_str().unwrap().to_owned(),
    };
    assert_eq!(sender.path, "/api/v1/ingest/webhooks/billing?tenant=acme");
    let whsec = std::fs::read_to_string(out.join("webhook.secret")).unwrap();
    assert!(whsec.starts_with("whsec_"));
    let auditor = stack.token(TENANT, atp_gateway::auth::Permission::Auditor);

    // HMAC, signed by the Standard Webhooks library; no id in the body: the webhook-id is.
    let body = serde_json::to_vec(&json!({
        "actor": {"id": "billing-system", "type": "service"},
        "action": "INVOICE_PAID",
        "resource": {"type": "invoice", "id": "inv_7"},
    }))
    .unwrap();
    let lib = standardwebhooks::Webhook::new(&whsec).unwrap();
    let ts = now();
    let sig = lib.sign("msg_1", ts, &body).unwrap();
    let created = sender
        .recorded(
            "msg_1",
            ts,
            &sig,
            &body,
            &auditor,
            ["msg_1", "webhook:hmac", "wh-1"],
        )
        .await;

    // The sender retries the delivery (same id, new timestamp and signature): the same record.
    let ts2 = now();
    let sig2 = lib.sign("msg_1", ts2, &body).unwrap();
    let (status, again) = sender.post("msg_1", ts2, &sig2, &body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["recordId"], created["recordId"]);

    // Ed25519 with the source's producer key; the body's own id wins over the webhook-id.
    let key = atp::keys::read_private(&out.join("producer.pem")).unwrap();
    let body = serde_json::to_vec(&json!({
        "id": "inv_8-paid",
        "actor": {"id": "billing-system", "type": "service"},
        "action": "INVOICE_PAID",
        "resource": {"type": "invoice", "id": "inv_8"},
    }))
    .unwrap();
    let ts = now();
    let sig = webhook::sign_ed25519(&key, "msg_2", &ts.to_string(), &body);
    sender
        .recorded(
            "msg_2",
            ts,
            &sig,
            &body,
            &auditor,
            ["inv_8-paid", "webhook:ed25519", "billing-1"],
        )
        .await;

    // Refused, each as WEBHOOK_UNAUTHENTICATED with the reason, and nothing recorded.
    let refused = |(status, problem): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{problem}");
        assert_eq!(problem["code"], "WEBHOOK_UNAUTHENTICATED");
        problem["detail"].as_str().unwrap().to_owned()
    };
    let body = br#"{"actor":{"id":"x","type":"user"},"action":"READ","resource":{"type":"invoice","id":"i"}}"#;
    let ts = now();
    let sig = lib.sign("msg_3", ts, body).unwrap();
    let tampered = br#"{"actor":{"id":"y","type":"user"},"action":"READ","resource":{"type":"invoice","id":"i"}}"#;
    assert!(refused(sender.post("msg_3", ts, &sig, tampered).await).contains("no signature"));
    let stale = now() - 600;
    let stale_sig = lib.sign("msg_3", stale, body).unwrap();
    assert!(refused(sender.post("msg_3", stale, &stale_sig, body).await).contains("300 s"));
    let foreign = Sender {
        api: Api::new(&running),
        path: "/api/v1/ingest/webhooks/billing?tenant=globex".to_owned(),
    };
    refused(foreign.post("msg_3", ts, &sig, body).await);
    let missing = sender
        .api
        .http
        .post(format!("{}{}", sender.api.base, sender.path))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let p = partition(TENANT, "billing");
    assert_eq!(
        stack.ledger_len(&p).await,
        2,
        "only the two good deliveries"
    );

    // A token whose subject would read as a webhook's is refused.
    let forged = stack.token_as(TENANT, "webhook:hmac:wh-1");
    let resp = sender
        .api
        .post("/api/v1/audit/append", &forged)
        .json(
            &json!({"sourceId": "billing", "id": "x", "actor": {"id": "a", "type": "user"},
            "action": "READ", "resource": {"type": "t", "id": "1"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    running.stop().await;
}
