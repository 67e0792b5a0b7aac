//! Edition gates: the gateway refuses a feature the token's edition lacks, and the use-case
//! behind it checks again with the edition it is handed (ADR 0011).

use atp_core::TenantId;
use atp_core::edition::Edition;
use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_nats::exports::{SetWebhookError, Webhook};
use atp_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn problem(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn export(api: &Api, token: &str) -> Value {
    let resp = api
        .post("/api/v1/exports", token)
        .json(&json!({ "selection": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["exportId"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(&format!("export {id} completes"), || async {
        let s = api.get_json(&format!("/api/v1/exports/{id}"), token).await;
        (s["status"] == "completed").then_some(s)
    })
    .await
}

#[tokio::test]
async fn enterprise_features_are_gated_at_the_gateway_and_again_in_the_use_case() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let standard_admin = stack.token_in(TENANT, Permission::Admin, Edition::Standard);
    let standard_auditor = stack.token_in(TENANT, Permission::Auditor, Edition::Standard);
    let enterprise_admin = stack.token(TENANT, Permission::Admin);
    let hook = json!({ "url": "http://127.0.0.1:9/atp-hook" });

    // The gateway's gate.
    let (status, p) = problem(
        api.http
            .put(format!("{}/api/v1/exports/webhook", api.base))
            .bearer_auth(&standard_admin)
            .json(&hook)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(p["code"], "EDITION_REQUIRED", "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("export webhooks"),
        "{p}"
    );
    let (status, p) = problem(
        api.post("/api/v1/integrity/verify/range", &standard_auditor)
            .json(&json!({ "sourceId": SOURCE }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("EDITION_REQUIRED"))
    );
    // What every edition has stays open.
    let records = api.get("/api/v1/audit/records", &standard_auditor);
    assert_eq!(records.send().await.unwrap().status(), StatusCode::OK);

    // The use-case refuses a caller that skipped the gateway's gate.
    let hooks = atp_nats::exports::webhooks(&stack.js).await.unwrap();
    let tenant = TenantId::new(TENANT).unwrap();
    let forged = Webhook {
        url: "http://127.0.0.1:9/atp-hook".to_owned(),
        secret: "c2VjcmV0".to_owned(),
    };
    let refused =
        atp_nats::exports::set_webhook(&hooks, &tenant, Edition::Standard, Some(&forged)).await;
    assert!(
        matches!(refused, Err(SetWebhookError::Edition(_))),
        "{refused:?}"
    );
    assert!(
        atp_nats::exports::webhook_of(&hooks, &tenant)
            .await
            .unwrap()
            .is_none()
    );

    // An enterprise admin sets the tenant's webhook. The exporter then announces an export
    // requested under enterprise, and not one requested under standard: it checks the edition
    // the request carries, not just the tenant's setting.
    let set = api
        .http
        .put(format!("{}/api/v1/exports/webhook", api.base))
        .bearer_auth(&enterprise_admin)
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let standard = export(&api, &standard_auditor).await;
    assert!(standard.get("webhook").is_none(), "{standard}");
    let enterprise = export(&api, &stack.token(TENANT, Permission::Auditor)).await;
    assert!(enterprise.get("webhook").is_some(), "{enterprise}");
    running.stop().await;
}
