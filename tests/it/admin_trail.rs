//! ATP's own admin actions are audit records: sent through ingest on the tenant's `atp-admin`
//! source (or tenant `atp` for platform-wide ones), chained, and queryable like any other
//! (ADR 0010).

use std::process::Command;

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn atp(stack: &Stack, args: &[&str]) {
    let out = Command::new(atp_binary())
        .args(args)
        .envs(stack.cli_env())
        .env("ATP_CHECKPOINT_KEYS_DIR", stack.keys_dir.path())
        .env("ATP_LOG_NAME", LOG_NAME)
        .env("ATP_LOG", "warn")
        .output()
        .expect("atp runs");
    assert!(
        out.status.success(),
        "atp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The admin trail of `tenant`, newest first, once it holds `n` records.
async fn trail(api: &Api, token: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} admin records"), || async {
        let page = api
            .get_json("/api/v1/audit/records?sourceId=atp-admin", token)
            .await;
        let items = page["items"].as_array().unwrap().clone();
        (items.len() == n).then_some(items)
    })
    .await
}

#[tokio::test]
async fn admin_actions_are_records_on_the_admin_trail() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let key = base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes(),
    );

    atp(
        &stack,
        &[
            "producer",
            "add",
            "--tenant",
            TENANT,
            "--source",
            "billing",
            "--source-uri",
            "https://billing.acme.example",
            "--key-id",
            "acme-billing-1",
            "--public-key",
            &key,
        ],
    );
    atp(
        &stack,
        &[
            "producer",
            "revoke",
            "--tenant",
            TENANT,
            "--source",
            "billing",
            "--key-id",
            "acme-billing-1",
        ],
    );

    let auditor = stack.token(TENANT, Permission::Auditor);
    let items = trail(&api, &auditor, 2).await;
    let [revoked, registered] = [&items[0], &items[1]];
    for (item, action) in [
        (registered, "PRODUCER_REGISTERED"),
        (revoked, "PRODUCER_KEY_REVOKED"),
    ] {
        assert_eq!(item["sourceId"], "atp-admin");
        let text = item["record"].to_string();
        assert!(text.contains(action), "{text}");
        assert!(text.contains("acme:billing"), "{text}");
        assert!(text.contains("operator:"), "{text}");
    }
    // The registration names the NATS identity it made (the stack has an auth directory).
    let text = registered["record"].to_string();
    assert!(
        text.contains("acme-billing-1") && text.contains("natsUser"),
        "{text}"
    );
    // Chained and checkpointed like any partition.
    eventually("the admin trail is checkpointed", || async {
        (stack.checkpoint_size(&partition(TENANT, "atp-admin")).await == 2).then_some(())
    })
    .await;

    // Another tenant sees none of it.
    let other = api
        .get_json(
            "/api/v1/audit/records?sourceId=atp-admin",
            &stack.token("globex", Permission::Auditor),
        )
        .await;
    assert_eq!(other["items"], json!([]));

    // A token cannot write on the admin trail.
    let forged = api
        .post(
            "/api/v1/audit/append",
            &stack.token(TENANT, Permission::Producer),
        )
        .json(&json!({
            "sourceId": "atp-admin", "id": "forged", "actor": {"id": "mallory", "type": "user"},
            "action": "PRODUCER_REGISTERED", "resource": {"type": "producer", "id": "acme:evil"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    let problem: Value = forged.json().await.unwrap();
    assert_eq!(problem["code"], "UNKNOWN_SOURCE", "{problem}");

    // Platform-wide actions go on tenant `atp`'s trail.
    atp(&stack, &["keys", "rotate"]);
    let platform = trail(&api, &stack.token("atp", Permission::Auditor), 1).await;
    assert!(
        platform[0]["record"]
            .to_string()
            .contains("SIGNING_KEY_ROTATED")
    );
    running.stop().await;
}

/// Tenant `atp` is ATP's own: no customer producer can be registered under it (nor under any
/// `atp-…` id), the dev issuer mints only auditor tokens for it, and the gateway accepts only
/// auditors for it, so nobody writes on, exports or configures ATP's trail with a token.
#[tokio::test]
async fn atps_own_tenant_ids_are_reserved() {
    let stack = Stack::start().await;
    for tenant in ["atp", "atp-platform"] {
        let err = atp::admin::add_producer(&stack.js, tenant, "billing", "urn:x:billing", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{tenant}: {err}");
    }
    let out = Command::new(atp_binary())
        .args([
            "producer",
            "add",
            "--tenant",
            "atp",
            "--source",
            "billing",
            "--source-uri",
            "urn:x:billing",
        ])
        .envs(stack.cli_env())
        .output()
        .expect("atp runs");
    assert!(
        !out.status.success(),
        "`atp producer add --tenant atp` is refused"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reserved"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let running = atp::serve::start(stack.serve_config(Roles::ALL))
        .await
        .unwrap();
    let api = Api::new(&running);
    let read = api
        .get(
            "/api/v1/audit/records",
            &stack.token("atp", Permission::Auditor),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.status(),
        StatusCode::OK,
        "auditors read ATP's own trail"
    );
    for role in [Permission::Admin, Permission::Producer] {
        let resp = api
            .get("/api/v1/audit/records", &stack.token("atp", role))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{role:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "FORBIDDEN", "{body}");
    }
    let append = api
        .post(
            "/api/v1/audit/append",
            &stack.token("atp", Permission::Producer),
        )
        .json(&json!({
            "sourceId": "atp-admin", "id": "forged", "actor": {"id": "mallory", "type": "user"},
            "action": "SIGNING_KEY_ROTATED", "resource": {"type": "key", "id": "k"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(append.status(), StatusCode::FORBIDDEN);
    // The customer tenant is untouched.
    let acme = api
        .get(
            "/api/v1/audit/records",
            &stack.token(TENANT, Permission::Admin),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(acme.status(), StatusCode::OK);
    running.stop().await;
}
