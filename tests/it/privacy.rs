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
pub(crate) fn crm_policy() -> policy::PolicyDocument {
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

pub(crate) fn event_about(
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

    // A refused submission is kept as received, so its values are redacted at read too.
    let mut unsigned = event_about(&stack, "e-refused", "u-cy", "cy@example.com", "1");
    unsigned.remove("dssematerial");
    stack.publish(&p, &unsigned).await;
    let rejection = |token: String| {
        let api = &api;
        async move {
            let page = api.get_json("/api/v1/audit/rejections", &token).await;
            page["items"].as_array().and_then(|i| i.first().cloned())
        }
    };
    let seen = eventually("the rejection", || rejection(auditor.clone())).await;
    assert_eq!(seen["reason"], "SIGNATURE_MISSING");
    assert_eq!(
        seen["event"]["data"]["attributes"]["email"],
        json!({"redacted": "personal"}),
        "{seen}"
    );
    assert_eq!(
        seen["event"]["data"]["actor"]["id"],
        json!({"redacted": "personal"})
    );
    assert_eq!(seen["event"]["data"]["attributes"]["plan"], "gold");
    let seen = rejection(privacy.clone()).await.unwrap();
    assert_eq!(
        seen["event"]["data"]["attributes"]["email"],
        "cy@example.com"
    );

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

/// Sets the CRM policy for the test tenant (version 2).
pub(crate) async fn set_crm_policy(stack: &Stack) {
    let kv = atp_nats::policy::bucket(&stack.js).await.unwrap();
    atp_nats::policy::replace(&kv, &TenantId::new(TENANT).unwrap(), crm_policy())
        .await
        .unwrap();
}

/// Ada's and Bob's events on the ledger and projected; returns the ledger's digests.
pub(crate) async fn ada_and_bob(stack: &Stack) -> Vec<atp_core::Digest> {
    let p = partition(TENANT, SOURCE);
    for (id, who, email, ssn) in [
        ("e-ada-1", "u-ada", "ada@example.com", "078-05-1120"),
        ("e-bob-1", "u-bob", "bob@example.com", "219-09-9999"),
        ("e-ada-2", "u-ada", "ada@example.com", "078-05-1120"),
    ] {
        stack
            .publish(&p, &event_about(stack, id, who, email, ssn))
            .await;
    }
    eventually("three records projected", || async {
        (stack.projected_records(TENANT).await == 3).then_some(())
    })
    .await;
    ledger_digests(stack).await
}

pub(crate) async fn ledger_digests(stack: &Stack) -> Vec<atp_core::Digest> {
    let p = partition(TENANT, SOURCE);
    stack
        .read_subject(atp_nats::streams::LEDGER, &atp_nats::subjects::ledger(&p))
        .await
        .iter()
        .map(|(_, _, bytes)| atp_core::Digest::of(bytes))
        .collect()
}

/// Asks for a data-subject request (`erasure` or `access`) about `subject`; returns the
/// answer's body, whatever its status.
pub(crate) async fn ask(api: &Api, token: &str, kind: &str, subject: &str) -> Value {
    api.post(&format!("/api/v1/privacy/subjects/{subject}/{kind}"), token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits for a privacy request to reach `state`; returns its view.
pub(crate) async fn request_reaches(api: &Api, token: &str, id: &str, state: &str) -> Value {
    eventually(&format!("request {id} {state}"), || async {
        let r = api
            .get_json(&format!("/api/v1/privacy/requests/{id}"), token)
            .await;
        (r["state"] == state).then_some(r)
    })
    .await
}

/// What a privacy officer sees of each record's data, by event id.
async fn seen_by(api: &Api, token: &str) -> std::collections::BTreeMap<String, Value> {
    records_as(api, token, "")
        .await
        .into_iter()
        .filter_map(|i| {
            let id = i["record"]["event"]["id"].as_str()?.to_owned();
            Some((id, i["data"].clone()))
        })
        .collect()
}

/// Every string of `clear` absent from a plain-text dump of the database, as text and as the
/// hex of bytea columns.
pub(crate) async fn assert_not_in_database(stack: &Stack, clear: &[&str]) {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .args(["--data-only", "--no-owner", &stack.database_url])
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(dump.len() > 1000, "a dump with the records in it");
    for c in clear {
        let hex: String = c.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !dump.contains(&c.to_lowercase()),
            "{c} is still in the database"
        );
        assert!(
            !dump.contains(&hex),
            "{c} is still in the database (as bytes)"
        );
    }
}

#[tokio::test]
async fn erasing_one_subject_leaves_every_proof_and_the_other_subject_whole() {
    let stack = Stack::start().await;
    set_crm_policy(&stack).await;
    let running = stack.serve(roles("all")).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);
    let before = ada_and_bob(&stack).await;
    // A refused submission of Ada's too: its clear copy is ATP's to forget.
    let mut unsigned = event_about(
        &stack,
        "e-ada-bad",
        "u-ada",
        "ada@example.com",
        "078-05-1120",
    );
    unsigned.remove("dssematerial");
    stack.publish(&p, &unsigned).await;
    eventually("the rejection projected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rejections WHERE tenant_id = $1")
            .bind(TENANT)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
        (n == 1).then_some(())
    })
    .await;
    let privacy = stack.token(TENANT, Permission::Privacy);
    let auditor = stack.token(TENANT, Permission::Auditor);

    // Only the privacy permission may ask.
    let refused = api
        .post("/api/v1/privacy/subjects/u-ada/erasure", &auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let asked = api
        .post("/api/v1/privacy/subjects/u-ada/erasure", &privacy)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let asked: Value = asked.json().await.unwrap();
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let done = request_reaches(&api, &privacy, &id, "done").await;
    assert_eq!(done["keysDestroyed"], 2, "{done}");
    assert_eq!(done["recordsAffected"], 2, "{done}");

    // Ada's values read erased for everyone; Bob's are as they were.
    let seen = seen_by(&api, &privacy).await;
    for ada in ["e-ada-1", "e-ada-2"] {
        let data = &seen[ada];
        assert_eq!(data["actor"]["id"], json!({"erased": true}), "{data}");
        assert_eq!(data["attributes"]["email"], json!({"erased": true}));
        assert_eq!(data["attributes"]["ssn"], json!({"erased": true}));
        assert_eq!(
            data["attributes"]["plan"], "gold",
            "what was never sealed stays"
        );
    }
    assert_eq!(seen["e-bob-1"]["attributes"]["email"], "bob@example.com");
    assert_eq!(seen["e-bob-1"]["actor"]["id"], "u-bob");
    let audited = records_as(&api, &auditor, "").await;
    let bob = audited
        .iter()
        .find(|i| i["record"]["event"]["id"] == "e-bob-1")
        .unwrap();
    assert_eq!(
        bob["data"]["attributes"]["email"],
        json!({"redacted": "personal"})
    );
    assert!(records_as(&api, &privacy, "actorId=u-ada").await.is_empty());
    assert!(
        records_as(&api, &privacy, "q=ada%40example")
            .await
            .is_empty()
    );

    // The ledger is untouched: the same bytes, every chain link whole, every record provable.
    let after = ledger_digests(&stack).await;
    assert_eq!(after[..before.len()], before[..]);
    stack.verify_chain(&p).await;
    // Every record's proof verifies offline against the signed checkpoint (the C2SP
    // tlog-proof the Go sumdb packages read), the erased subject's included, and
    // `atp verify chain` walks the partition whole.
    let (known, _) = crate::integrity::published_verifiers(&api).await;
    let items = records_as(&api, &auditor, &format!("sourceId={SOURCE}")).await;
    assert_eq!(items.len(), 3);
    for item in items {
        let rid = item["recordId"].as_str().unwrap().to_owned();
        let proof: Value = eventually("a proof", || async {
            let r = api
                .get(&format!("/api/v1/audit/records/{rid}/proof"), &auditor)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                r.json().await.ok()
            } else {
                None
            }
        })
        .await;
        let bytes = atp_core::canonical::to_canonical(&proof["record"]).unwrap();
        assert_eq!(
            atp_core::Digest::of(&bytes).to_string(),
            proof["digest"].as_str().unwrap()
        );
        let tlog =
            atp_core::checkpoint::TlogProof::parse(proof["tlogProof"].as_str().unwrap()).unwrap();
        let index = proof["leafIndex"].as_u64().unwrap();
        atp_core::checkpoint::verify_record(&bytes, &p, index, &tlog, &known, Some(LOG_NAME))
            .unwrap_or_else(|e| panic!("record {rid} no longer proves: {e}"));
    }
    let out = std::process::Command::new(atp_binary())
        .args(["verify", "chain", "--tenant", TENANT, "--source", SOURCE])
        .envs(stack.cli_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The attestation: on the tenant's admin trail, naming the subject only as a salted hash.
    let done = eventually("the attestation projected", || async {
        let r = api
            .get_json(&format!("/api/v1/privacy/requests/{id}"), &privacy)
            .await;
        r["attestationRecordId"].is_string().then_some(r)
    })
    .await;
    let salt = done["subjectSalt"].as_str().unwrap();
    let expected = {
        use sha2::Digest as _;
        let h = sha2::Sha256::new()
            .chain_update(salt.as_bytes())
            .chain_update(b"u-ada")
            .finalize();
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(done["subjectHash"], expected.as_str());
    let rid = done["attestationRecordId"].as_str().unwrap();
    let attestation = api
        .get_json(&format!("/api/v1/audit/records/{rid}"), &auditor)
        .await;
    let attrs = &attestation["data"]["attributes"];
    assert_eq!(attestation["data"]["action"], "SUBJECT_ERASED");
    assert_eq!(attrs["subjectHash"], expected.as_str());
    assert_eq!(attrs["recordsAffected"], 2);
    assert_eq!(attrs["keysDestroyed"], 2);

    // No clear copy of Ada's values is left in the database (rejections included).
    assert_not_in_database(&stack, &["ada@example.com", "078-05-1120", "u-ada"]).await;

    // Erasure is idempotent: asking again finds nothing left and finishes.
    let again: Value = ask(&api, &privacy, "erasure", "u-ada").await;
    let again = request_reaches(&api, &privacy, again["requestId"].as_str().unwrap(), "done").await;
    assert_eq!(again["keysDestroyed"], 0);
    running.stop().await;
}

#[tokio::test]
async fn a_legal_hold_blocks_erasure_until_it_is_released() {
    let stack = Stack::start().await;
    set_crm_policy(&stack).await;
    let running = stack.serve(roles("all")).await;
    let api = Api::new(&running);
    ada_and_bob(&stack).await;
    let privacy = stack.token(TENANT, Permission::Privacy);

    // A hold on the subject: the request is refused at once, naming the hold.
    let hold: Value = api
        .post_json(
            "/api/v1/legal-holds",
            &privacy,
            &json!({"subjectId": "u-bob", "reason": "litigation 2026-17"}),
        )
        .await;
    let hold_id = hold["holdId"].as_str().unwrap().to_owned();
    let refused = api
        .post("/api/v1/privacy/subjects/u-bob/erasure", &privacy)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["code"], "LEGAL_HOLD");
    assert!(refused["detail"].as_str().unwrap().contains(&hold_id));

    // A hold on the source covers Ada's records: her erasure stops, blocked by it.
    let source_hold: Value = api
        .post_json(
            "/api/v1/legal-holds",
            &privacy,
            &json!({"sourceId": SOURCE, "reason": "regulator's inquiry"}),
        )
        .await;
    let source_hold_id = source_hold["holdId"].as_str().unwrap().to_owned();
    let asked: Value = ask(&api, &privacy, "erasure", "u-ada").await;
    let blocked = request_reaches(
        &api,
        &privacy,
        asked["requestId"].as_str().unwrap(),
        "blocked",
    )
    .await;
    assert!(
        blocked["detail"]
            .as_str()
            .unwrap()
            .contains(&source_hold_id),
        "{blocked}"
    );
    assert_eq!(blocked["keysDestroyed"], 0);
    let seen = seen_by(&api, &privacy).await;
    assert_eq!(seen["e-ada-1"]["attributes"]["email"], "ada@example.com");

    // Both listed, then released; the erasure asked again goes through.
    let listed = api.get_json("/api/v1/legal-holds", &privacy).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    for h in [&hold_id, &source_hold_id] {
        let released = api
            .http
            .delete(format!("{}/api/v1/legal-holds/{h}", api.base))
            .bearer_auth(&privacy)
            .send()
            .await
            .unwrap();
        assert_eq!(released.status(), 200);
    }
    assert!(
        api.get_json("/api/v1/legal-holds", &privacy).await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let asked: Value = ask(&api, &privacy, "erasure", "u-ada").await;
    request_reaches(&api, &privacy, asked["requestId"].as_str().unwrap(), "done").await;
    let seen = seen_by(&api, &privacy).await;
    assert_eq!(
        seen["e-ada-1"]["attributes"]["email"],
        json!({"erased": true})
    );
    running.stop().await;
}

/// `atp retention plan --json` against this stack: one object per expired key group.
async fn retention_plan(stack: &Stack) -> Vec<Value> {
    let out = tokio::process::Command::new(atp_binary())
        .args(["retention", "plan", "--json"])
        .envs(stack.cli_env())
        .env("ATP_TENANT_KEYS_DIR", stack.tenant_keys_dir())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn retention_expires_what_is_past_it_unless_held_and_attests_each_expiry() {
    let stack = Stack::start().await;
    let mut policy = crm_policy();
    policy.retention = serde_json::from_value(json!({
        "policies": {"default-7y": {"durationSeconds": 220898664}, "one-second": {"durationSeconds": 1}},
        "default": "default-7y",
        "byClassification": {"personal": "one-second"}
    }))
    .unwrap();
    let kv = atp_nats::policy::bucket(&stack.js).await.unwrap();
    atp_nats::policy::replace(&kv, &TenantId::new(TENANT).unwrap(), policy)
        .await
        .unwrap();
    // Everything but the lifecycle role, to look at the plan before anything expires.
    let running = stack
        .serve(roles("gateway,ingest,projector,integrity"))
        .await;
    let api = Api::new(&running);
    ada_and_bob(&stack).await;
    let privacy = stack.token(TENANT, Permission::Privacy);

    // Within about two seconds each personal value's one-second bucket and retention have
    // passed: the plan lists every such key (one per subject and second: Ada's two events may
    // or may not share one); sensitive values (seven years) are not in it.
    let short_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subject_keys WHERE tenant_id = $1 AND retention_policy_id = 'one-second'",
    )
    .bind(TENANT)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!((2..=3).contains(&short_keys), "{short_keys}");
    let plan = eventually("the personal keys in the plan", || async {
        let plan = retention_plan(&stack).await;
        let n: u64 = plan
            .iter()
            .map(|e| e["keysToDestroy"].as_u64().unwrap())
            .sum();
        (n == short_keys as u64).then_some(plan)
    })
    .await;
    assert!(
        plan.iter().all(|e| e["retentionPolicyId"] == "one-second"),
        "{plan:?}"
    );

    // A hold on Bob keeps his key; the plan says so.
    let hold: Value = api
        .post_json(
            "/api/v1/legal-holds",
            &privacy,
            &json!({"subjectId": "u-bob", "reason": "dispute"}),
        )
        .await;
    let plan = retention_plan(&stack).await;
    let held: u64 = plan.iter().map(|e| e["keysHeld"].as_u64().unwrap()).sum();
    let destroy: u64 = plan
        .iter()
        .map(|e| e["keysToDestroy"].as_u64().unwrap())
        .sum();
    assert_eq!((held, destroy), (1, short_keys as u64 - 1), "{plan:?}");
    assert!(
        plan.iter().any(|e| e["holds"][0] == hold["holdId"]),
        "{plan:?}"
    );

    // The lifecycle role expires Ada's personal values and attests it; Bob's stay.
    let lifecycle = stack.serve(roles("lifecycle")).await;
    eventually("Ada's personal values expired", || async {
        let seen = seen_by(&api, &privacy).await;
        (seen["e-ada-1"]["attributes"]["email"] == json!({"erased": true})
            && seen["e-ada-2"]["actor"]["id"] == json!({"erased": true}))
        .then_some(())
    })
    .await;
    let seen = seen_by(&api, &privacy).await;
    assert_eq!(
        seen["e-ada-1"]["attributes"]["ssn"], "078-05-1120",
        "sensitive: seven years"
    );
    assert_eq!(
        seen["e-bob-1"]["attributes"]["email"], "bob@example.com",
        "held"
    );
    let attested = eventually("the deletion attestation", || async {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT record FROM records WHERE tenant_id = $1 AND source_id = 'atp-admin' \
             AND event_id LIKE 'retention-%'",
        )
        .bind(TENANT)
        .fetch_all(&stack.pool)
        .await
        .unwrap();
        (!rows.is_empty()).then_some(rows)
    })
    .await;
    let record: Value = serde_json::from_slice(&attested[0].0).unwrap();
    let attrs = &record["event"]["data"]["attributes"];
    assert_eq!(record["event"]["data"]["action"], "RETENTION_EXPIRED");
    // The tenant's policy makes actor ids personal; ATP's own trail is under ATP's built-in
    // policy, so the attestation never depends on a key.
    assert_eq!(record["policy"]["policyVersion"], 1, "{record}");
    assert!(
        record["event"]["data"]["actor"]["id"].is_string(),
        "{record}"
    );
    assert_eq!(attrs["retentionPolicyId"], "one-second");
    assert!(attrs["keysDestroyed"].as_u64().unwrap() >= 1, "{attrs}");
    stack.verify_chain(&partition(TENANT, SOURCE)).await;

    // Released, Bob's expires too.
    let hold_id = hold["holdId"].as_str().unwrap();
    api.http
        .delete(format!("{}/api/v1/legal-holds/{hold_id}", api.base))
        .bearer_auth(&privacy)
        .send()
        .await
        .unwrap();
    eventually("Bob's personal values expired", || async {
        let seen = seen_by(&api, &privacy).await;
        (seen["e-bob-1"]["attributes"]["email"] == json!({"erased": true})).then_some(())
    })
    .await;
    assert!(
        retention_plan(&stack)
            .await
            .iter()
            .all(|e| e["keysToDestroy"] == 0)
    );
    lifecycle.stop().await;
    running.stop().await;
}

/// Every file under `dir` that holds any of `clear`, as bytes.
fn files_holding(dir: &std::path::Path, clear: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                for c in clear {
                    if bytes.windows(c.len()).any(|w| w == c.as_bytes()) {
                        found.push(format!("{c} in {}", path.display()));
                    }
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn after_an_erasure_and_the_transient_bound_jetstream_holds_no_clear_copy() {
    let stack = Stack::start().await;
    set_crm_policy(&stack).await;
    // The bound on refused submissions' clear copies (ATP_REJECTED's max_age, 30 days by
    // default) shortened to a second, as an operator may.
    let mut rejected = stack
        .js
        .get_stream(atp_nats::streams::REJECTED)
        .await
        .unwrap();
    // (The store is scanned as files: nothing here reads the stream after this.)
    let mut config = rejected.info().await.unwrap().config.clone();
    config.max_age = std::time::Duration::from_secs(1);
    config.duplicate_window = std::time::Duration::from_secs(1);
    stack.js.update_stream(config).await.unwrap();
    let running = stack.serve(roles("all")).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);
    ada_and_bob(&stack).await;
    let mut unsigned = event_about(
        &stack,
        "e-ada-bad",
        "u-ada",
        "ada@example.com",
        "078-05-1120",
    );
    unsigned.remove("dssematerial");
    stack.publish(&p, &unsigned).await;
    eventually("the rejection on ATP_REJECTED", || async {
        (stack.rejected_len(&p).await == 1).then_some(())
    })
    .await;
    let Nats::One(nats) = &stack.nats else {
        unreachable!("Stack::start runs one server")
    };
    let store = nats.store_dir().to_owned();
    let clear = ["ada@example.com", "078-05-1120"];
    assert!(
        !files_holding(&store, &clear).is_empty(),
        "the scan finds clear copies before the erasure (it can see them)"
    );
    let privacy = stack.token(TENANT, Permission::Privacy);
    let asked: Value = ask(&api, &privacy, "erasure", "u-ada").await;
    request_reaches(&api, &privacy, asked["requestId"].as_str().unwrap(), "done").await;
    let left = eventually(
        "no clear copy of Ada's values in the JetStream store",
        || async {
            let found = files_holding(&store, &clear);
            found.is_empty().then_some(found)
        },
    )
    .await;
    assert!(left.is_empty());
    // Bob's record is still readable, and the ledger whole.
    assert_eq!(stack.verify_chain(&p).await, 3);
    running.stop().await;
}

/// A bundle unpacked by `tar`, with `atp verify` at hand.
struct Unpacked {
    dir: tempfile::TempDir,
    tar: std::path::PathBuf,
    x: std::path::PathBuf,
}

impl Unpacked {
    fn new(bytes: &[u8]) -> Unpacked {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("bundle.tar");
        std::fs::write(&tar, bytes).unwrap();
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let (ok, _, err) = crate::export::run(
            std::process::Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(&x),
        );
        assert!(ok, "tar -x: {err}");
        Unpacked { dir, tar, x }
    }

    fn text(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.x.join(path)).ok()
    }

    /// The lines of `disclosures.jsonl`, none if the bundle has none.
    fn disclosures(&self) -> Vec<Value> {
        self.text("disclosures.jsonl")
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The event ids of the records, in bundle order.
    fn event_ids(&self) -> Vec<String> {
        self.text("records/part-00000.jsonl")
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                r["event"]["id"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// `atp verify` of `tar`, anchored to the deployment's published keys: success, the
    /// report, and what it printed on stderr.
    async fn verify(&self, api: &Api, tar: &std::path::Path) -> (bool, Value, String) {
        let jwks = self.dir.path().join("jwks.json");
        std::fs::write(&jwks, api.get_public_text("/api/v1/integrity/keys").await).unwrap();
        let (ok, out, err) = crate::export::run(
            std::process::Command::new(atp_binary())
                .arg("verify")
                .arg(tar)
                .arg("--key")
                .arg(&jwks),
        );
        (ok, serde_json::from_str(&out).unwrap_or(Value::Null), err)
    }
}

/// Waits until the test source's checkpoints cover `n` records.
async fn checkpointed(stack: &Stack, n: u64) {
    let p = partition(TENANT, SOURCE);
    eventually("the records checkpointed", || async {
        (stack.checkpoint_size(&p).await >= n).then_some(())
    })
    .await;
}

/// Ada's and Bob's clear values, none of which a record line may hold.
const ADA: [&str; 3] = ["u-ada", "ada@example.com", "078-05-1120"];
const BOB: [&str; 3] = ["u-bob", "bob@example.com", "219-09-9999"];

#[tokio::test]
async fn an_export_discloses_what_its_requester_reads_and_atp_verify_proves_each_value() {
    let stack = Stack::start().await;
    set_crm_policy(&stack).await;
    let running = stack.serve(roles("all")).await;
    let api = Api::new(&running);
    ada_and_bob(&stack).await;
    checkpointed(&stack, 3).await;
    let privacy = stack.token(TENANT, Permission::Privacy);
    let auditor = stack.token(TENANT, Permission::Auditor);

    // The privacy officer's bundle: the records as stored (sealed), every value disclosed
    // beside them.
    let id = crate::export::request_export(&api, &privacy, json!({})).await;
    let status = crate::export::completed(&api, &privacy, &id).await;
    assert_eq!(status["recordCount"], 3, "{status}");
    assert_eq!(
        status["readable"],
        json!([
            "public",
            "internal",
            "confidential",
            "personal",
            "sensitive"
        ])
    );
    let bundle = Unpacked::new(&crate::export::download(&api, &privacy, &id).await);
    let part = bundle.text("records/part-00000.jsonl").unwrap();
    for clear in ADA.iter().chain(&BOB) {
        assert!(!part.contains(clear), "{clear} in clear in a record line");
    }
    let lines = bundle.disclosures();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, (who, email)) in lines.iter().zip([
        ("u-ada", "ada@example.com"),
        ("u-bob", "bob@example.com"),
        ("u-ada", "ada@example.com"),
    ]) {
        let values = line["values"].as_array().unwrap();
        let paths: Vec<&str> = values.iter().map(|v| v["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/actor/id", "/attributes/email", "/attributes/ssn"]);
        assert_eq!(values[0]["value"], who);
        assert_eq!(values[1]["value"], email);
        assert_eq!(values[0]["fieldKey"].as_str().unwrap().len(), 44);
    }
    // CONTRACT §6 with standard tools: the disclosures are listed and signed like the rest.
    let (ok, out, err) = crate::export::run(
        std::process::Command::new("sha256sum")
            .current_dir(&bundle.x)
            .args(["-c", "--strict", "SHA256SUMS"]),
    );
    assert!(ok && out.contains("disclosures.jsonl: OK"), "{out} {err}");
    let (ok, out, err) = crate::export::run(
        std::process::Command::new("openssl")
            .current_dir(&bundle.x)
            .args([
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                "signing-key.pem",
                "-rawin",
                "-in",
                "manifest.json",
                "-sigfile",
                "manifest.sig",
            ]),
    );
    assert!(ok, "openssl: {out} {err}");
    // `atp verify` opens every disclosed value in its hashed record.
    let (ok, report, err) = bundle.verify(&api, &bundle.tar).await;
    assert!(ok, "atp verify: {err}");
    assert_eq!(report["recordsVerified"], 3);
    assert_eq!(report["disclosuresVerified"], 9);
    // So does the server, for the stored bundle.
    let answer = api
        .post_json(
            "/api/v1/integrity/verify/export",
            &privacy,
            &json!({ "exportId": id }),
        )
        .await;
    assert_eq!(answer["verified"], true, "{answer}");
    assert_eq!(answer["report"]["disclosuresVerified"], 9);

    // A disclosed value changed after the fact (the line left canonical, the archive packed
    // again) fails, naming the record.
    let path = bundle.x.join("disclosures.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let victim = lines[0]["recordId"].as_str().unwrap().to_owned();
    std::fs::write(
        &path,
        text.replacen("ada@example.com", "eve@example.com", 1),
    )
    .unwrap();
    let forged = bundle.dir.path().join("forged.tar");
    let (ok, _, err) = crate::export::run(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(&forged)
            .arg("-C")
            .arg(&bundle.x)
            .arg("."),
    );
    assert!(ok, "tar -c: {err}");
    let (ok, _, err) = bundle.verify(&api, &forged).await;
    assert!(!ok, "a forged disclosure passed");
    assert!(
        err.contains("DISCLOSURE_MISMATCH") && err.contains(&victim),
        "{err}"
    );

    // The auditor's bundle of the same records discloses nothing it may not read: no
    // disclosures at all, and no clear personal value anywhere in the archive.
    let id = crate::export::request_export(&api, &auditor, json!({})).await;
    let status = crate::export::completed(&api, &auditor, &id).await;
    assert_eq!(status["recordCount"], 3);
    let tar = crate::export::download(&api, &auditor, &id).await;
    let text = String::from_utf8_lossy(&tar);
    for clear in ADA.iter().chain(&BOB) {
        assert!(!text.contains(clear), "{clear} in the auditor's bundle");
    }
    let bundle = Unpacked::new(&tar);
    assert!(bundle.text("disclosures.jsonl").is_none());
    let (ok, report, err) = bundle.verify(&api, &bundle.tar).await;
    assert!(ok, "atp verify: {err}");
    assert_eq!(report["disclosuresVerified"], 0);

    // No oracle in an export's filters either: a filter on a value the requester may not read
    // selects nothing.
    let id = crate::export::request_export(&api, &auditor, json!({"actorId": "u-ada"})).await;
    let status = crate::export::completed(&api, &auditor, &id).await;
    assert_eq!(status["recordCount"], 0, "{status}");
    let id = crate::export::request_export(&api, &privacy, json!({"actorId": "u-ada"})).await;
    let status = crate::export::completed(&api, &privacy, &id).await;
    assert_eq!(status["recordCount"], 2, "{status}");
    running.stop().await;
}

#[tokio::test]
async fn an_access_request_exports_the_subjects_records_and_values_until_it_is_erased() {
    let stack = Stack::start().await;
    set_crm_policy(&stack).await;
    let running = stack.serve(roles("all")).await;
    let api = Api::new(&running);
    ada_and_bob(&stack).await;
    checkpointed(&stack, 3).await;
    let privacy = stack.token(TENANT, Permission::Privacy);
    let auditor = stack.token(TENANT, Permission::Auditor);

    let refused = api
        .post("/api/v1/privacy/subjects/u-ada/access", &auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let asked = api
        .post("/api/v1/privacy/subjects/u-ada/access", &privacy)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 202);
    let asked: Value = asked.json().await.unwrap();
    assert_eq!(asked["kind"], "access");
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let done = request_reaches(&api, &privacy, &id, "done").await;
    assert_eq!(done["recordsAffected"], 2, "{done}");
    assert_eq!(done["keysDestroyed"], 0, "{done}");
    let kids = done["keyIds"].as_array().unwrap().clone();
    assert_eq!(kids.len(), 2, "one key per retention policy: {done}");
    let export_id = done["exportId"].as_str().unwrap().to_owned();

    // The export: Ada's records only, her values disclosed, nobody else's.
    let status = crate::export::completed(&api, &privacy, &export_id).await;
    assert_eq!(status["recordCount"], 2);
    assert_eq!(status["kind"], "subject-access");
    let tar = crate::export::download(&api, &privacy, &export_id).await;
    let text = String::from_utf8_lossy(&tar);
    for clear in BOB {
        assert!(!text.contains(clear), "{clear} in Ada's access bundle");
    }
    let access = Unpacked::new(&tar);
    assert_eq!(access.event_ids(), ["e-ada-1", "e-ada-2"]);
    let lines = access.disclosures();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let v = &line["values"];
        assert_eq!(v[0]["value"], "u-ada");
        assert_eq!(v[1]["value"], "ada@example.com");
        assert_eq!(v[2]["value"], "078-05-1120");
    }
    let manifest: Value = serde_json::from_str(&access.text("manifest.json").unwrap()).unwrap();
    assert_eq!(manifest["selection"], json!({ "subjectKeys": kids }));
    let (ok, report, err) = access.verify(&api, &access.tar).await;
    assert!(ok, "atp verify: {err}");
    assert_eq!(report["disclosuresVerified"], 6);

    // Ada is erased: a new export discloses nothing of her (Bob's values still), and every
    // bundle, the earlier one disclosing her included, still verifies.
    let erasure: Value = ask(&api, &privacy, "erasure", "u-ada").await;
    request_reaches(
        &api,
        &privacy,
        erasure["requestId"].as_str().unwrap(),
        "done",
    )
    .await;
    let id = crate::export::request_export(&api, &privacy, json!({ "sourceId": SOURCE })).await;
    crate::export::completed(&api, &privacy, &id).await;
    let tar = crate::export::download(&api, &privacy, &id).await;
    let text = String::from_utf8_lossy(&tar);
    for clear in ADA {
        assert!(
            !text.contains(clear),
            "{clear} disclosed after Ada's erasure"
        );
    }
    let after = Unpacked::new(&tar);
    assert_eq!(after.event_ids(), ["e-ada-1", "e-bob-1", "e-ada-2"]);
    let lines = after.disclosures();
    assert_eq!(lines.len(), 1, "Bob's record alone: {lines:?}");
    assert_eq!(lines[0]["values"][1]["value"], "bob@example.com");
    let (ok, report, err) = after.verify(&api, &after.tar).await;
    assert!(ok, "atp verify: {err}");
    assert_eq!(report["recordsVerified"], 3);
    assert_eq!(report["disclosuresVerified"], 3);
    let (ok, _, err) = access.verify(&api, &access.tar).await;
    assert!(ok, "the access bundle issued before the erasure: {err}");
    // ATP's stored copy of that bundle disclosed Ada's values: the erasure withdrew it.
    let gone = api
        .get(&format!("/api/v1/exports/{export_id}/download"), &privacy)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410, "the access bundle is withdrawn");
    let gone: Value = gone.json().await.unwrap();
    assert_eq!(gone["code"], "EXPORT_EXPIRED");

    // Asked again, Ada's access finds no key and no record: an empty bundle, verified.
    let again: Value = ask(&api, &privacy, "access", "u-ada").await;
    let again = request_reaches(&api, &privacy, again["requestId"].as_str().unwrap(), "done").await;
    assert_eq!(again["recordsAffected"], 0, "{again}");
    let export_id = again["exportId"].as_str().unwrap();
    let empty = Unpacked::new(&crate::export::download(&api, &privacy, export_id).await);
    assert!(empty.event_ids().is_empty());
    let (ok, report, err) = empty.verify(&api, &empty.tar).await;
    assert!(ok, "atp verify: {err}");
    assert_eq!(report["recordsVerified"], 0);
    running.stop().await;
}
