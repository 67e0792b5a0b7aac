//! Privacy by design (issue 15, CONTRACT §8): values classified `personal` or `sensitive` are
//! sealed before hashing, every chain still verifies, and every read shows each caller only
//! what the tenant's policy lets it see, filters and search included.

use atp_core::TenantId;
use atp_core::policy;
use atp_core::role::Permission;
use atp_tests::*;
use serde_json::{Map, Value, json};

/// A CRM's policy: the actor is the data subject, an e-mail address is personal, a social
/// security number sensitive, the plan confidential.
fn crm_policy() -> policy::PolicyDocument {
    policy::parse(
        br#"{
            "fields": [
                {"path": "/actor/id", "classification": "personal"},
                {"path": "/attributes/email", "classification": "personal"},
                {"path": "/attributes/ssn", "classification": "sensitive"},
                {"path": "/attributes/plan", "classification": "confidential"}
            ],
            "retention": {
                "policies": {"default-7y": {"durationSeconds": 220898664}, "gdpr-2y": {"durationSeconds": 63115200}},
                "default": "default-7y",
                "byClassification": {"personal": "gdpr-2y"}
            }
        }"#,
    )
    .unwrap()
}

fn event_about(
    stack: &Stack,
    id: &str,
    subject: &str,
    email: &str,
    ssn: &str,
) -> Map<String, Value> {
    let mut e = stack.event(id);
    e["data"] = json!({
        "actor": {"id": subject, "type": "user"},
        "action": "UPDATE",
        "resource": {"type": "Contact", "id": "c-42"},
        "outcome": "success",
        "attributes": {"email": email, "ssn": ssn, "plan": "gold", "ip": "192.0.2.1"}
    });
    stack.sign(e)
}

async fn records_as(api: &Api, token: &str, query: &str) -> Vec<Value> {
    let page = api
        .get_json(&format!("/api/v1/audit/records?{query}"), token)
        .await;
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .clone()
}

#[tokio::test]
async fn personal_values_are_sealed_on_the_ledger_and_shown_by_permission() {
    let stack = Stack::start().await;
    let kv = atp_nats::policy::bucket(&stack.js).await.unwrap();
    let tenant = TenantId::new(TENANT).unwrap();
    let stored = atp_nats::policy::replace(&kv, &tenant, crm_policy())
        .await
        .unwrap();
    assert_eq!(stored.policy_version, 2);
    let running = stack.serve(roles("all")).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);

    stack
        .publish(
            &p,
            &event_about(&stack, "e-ada", "u-ada", "ada@example.com", "078-05-1120"),
        )
        .await;
    stack
        .publish(
            &p,
            &event_about(&stack, "e-bob", "u-bob", "bob@example.com", "219-09-9999"),
        )
        .await;
    eventually("both records projected", || async {
        (stack.projected_records(TENANT).await == 2).then_some(())
    })
    .await;

    // On the ledger: sealed, stamped with the version that decided it, and the chain whole.
    let ledger = stack.ledger(&p).await;
    assert_eq!(stack.verify_chain(&p).await, 2);
    for r in &ledger {
        assert_eq!(r.policy.policy_version, 2);
        assert_eq!(r.policy.classification, "sensitive");
        assert_eq!(r.policy.retention_policy_id, "default-7y");
        let text = serde_json::to_string(&r.event).unwrap();
        for clear in [
            "u-ada",
            "u-bob",
            "ada@example.com",
            "078-05-1120",
            "bob@example",
        ] {
            assert!(
                !text.contains(clear),
                "{clear} in clear on the ledger: {text}"
            );
        }
        let data = &r.event["data"];
        assert_eq!(data["attributes"]["email"]["enc"], "xchacha20poly1305");
        assert_eq!(data["attributes"]["ssn"]["cls"], "sensitive");
        assert_eq!(
            data["attributes"]["plan"], "gold",
            "confidential stays in clear"
        );
    }
    // Each subject has keys of its own: the two records name different key ids.
    let kid = |r: &atp_core::Record| r.event["data"]["attributes"]["email"]["kid"].clone();
    assert_ne!(kid(&ledger[0]), kid(&ledger[1]));

    // A data-protection officer reads every value; an auditor sees personal and sensitive
    // values redacted and everything else in clear.
    let privacy = stack.token(TENANT, Permission::Privacy);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let items = records_as(&api, &privacy, "").await;
    let ada = items
        .iter()
        .find(|i| i["data"]["actor"]["id"] == "u-ada")
        .unwrap_or_else(|| panic!("privacy sees u-ada: {items:?}"));
    assert_eq!(ada["data"]["attributes"]["email"], "ada@example.com");
    assert_eq!(ada["data"]["attributes"]["ssn"], "078-05-1120");
    let items = records_as(&api, &auditor, "").await;
    assert_eq!(items.len(), 2);
    for item in &items {
        let data = &item["data"];
        assert_eq!(data["actor"]["id"], json!({"redacted": "personal"}));
        assert_eq!(data["attributes"]["email"], json!({"redacted": "personal"}));
        assert_eq!(data["attributes"]["ssn"], json!({"redacted": "sensitive"}));
        assert_eq!(data["attributes"]["plan"], "gold");
        // The stored record is served whole: its sealed values are ciphertext, and it still
        // hashes to its digest.
        assert!(item.get("redacted").is_none(), "{item}");
        let bytes = serde_json::to_vec(&item["record"]).unwrap();
        let canonical = atp_core::canonical::to_canonical(&item["record"]).unwrap();
        assert_eq!(canonical, bytes);
        assert_eq!(
            atp_core::Digest::of(&canonical).to_string(),
            item["digest"].as_str().unwrap()
        );
    }

    // No oracle: a filter or a search on a value the caller may not read matches nothing.
    assert!(records_as(&api, &auditor, "actorId=u-ada").await.is_empty());
    assert!(
        records_as(&api, &auditor, "q=ada%40example")
            .await
            .is_empty()
    );
    assert_eq!(records_as(&api, &privacy, "actorId=u-ada").await.len(), 1);
    assert_eq!(records_as(&api, &privacy, "q=ada%40example").await.len(), 1);
    // What the auditor may read still filters and searches.
    assert_eq!(records_as(&api, &auditor, "q=gold").await.len(), 2);
    assert_eq!(records_as(&api, &auditor, "resourceId=c-42").await.len(), 2);

    // A rebuilt read model opens the sealed values again with the keys.
    atp_runtime::replay::replay_records(
        &stack.js,
        &stack.pool,
        stack.tenant_keys(),
        &Default::default(),
    )
    .await
    .unwrap();
    let items = records_as(&api, &privacy, "actorId=u-bob").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["data"]["attributes"]["email"], "bob@example.com");
    running.stop().await;
}

#[tokio::test]
async fn a_policy_change_applies_to_later_events_and_never_rewrites_earlier_records() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("all")).await;
    let p = partition(TENANT, SOURCE);
    stack
        .publish(
            &p,
            &event_about(&stack, "before", "u-1", "one@example.com", "1"),
        )
        .await;
    eventually("the first record", || async {
        (stack.ledger_len(&p).await == 1).then_some(())
    })
    .await;
    let kv = atp_nats::policy::bucket(&stack.js).await.unwrap();
    atp_nats::policy::replace(&kv, &TenantId::new(TENANT).unwrap(), crm_policy())
        .await
        .unwrap();
    // Ingest re-reads the policy within `CURRENT_TTL`: events keep coming until one is
    // stamped with the new version.
    let mut n = 0;
    eventually("an event stamped with version 2", || {
        n += 1;
        let id = format!("after-{n}");
        let event = event_about(&stack, &id, "u-1", "one@example.com", "1");
        let (stack, p) = (&stack, p.clone());
        async move {
            stack.publish(&p, &event).await;
            let ledger = stack.ledger(&p).await;
            ledger
                .iter()
                .any(|r| r.policy.policy_version == 2)
                .then_some(())
        }
    })
    .await;
    let ledger = stack.ledger(&p).await;
    let first = &ledger[0];
    assert_eq!(first.policy.policy_version, 1);
    assert_eq!(first.policy.classification, "internal");
    assert_eq!(
        first.event["data"]["attributes"]["email"],
        "one@example.com"
    );
    let last = ledger.last().unwrap();
    assert_eq!(last.policy.policy_version, 2);
    assert_eq!(
        last.event["data"]["attributes"]["email"]["enc"],
        "xchacha20poly1305"
    );
    stack.verify_chain(&p).await;
    running.stop().await;
}
