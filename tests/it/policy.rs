//! A tenant's privacy policy over HTTP (CONTRACT §8): read, replaced as a new version,
//! announced on `atp.policy.changed.<tenant>`, recorded on the admin trail, applied by ingest,
//! and evaluated for an event per role — each tenant seeing only its own.

use atp_core::TenantId;
use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Personal e-mail, sensitive diagnosis, public action; the subject where it always is.
fn policy() -> Value {
    json!({
        "fields": [
            {"path": "/attributes/email", "classification": "personal"},
            {"path": "/attributes/diagnosis", "classification": "sensitive"},
            {"path": "/action", "classification": "public"}
        ],
        "retention": {
            "policies": {"default-7y": {"durationSeconds": 220903200}, "gdpr-2y": {"durationSeconds": 63115200}},
            "default": "default-7y",
            "byClassification": {"personal": "gdpr-2y"}
        },
        "sources": {"crm": {"subject": "/resource/id"}}
    })
}

fn event(id: &str) -> Value {
    json!({
        "sourceId": SOURCE, "id": id, "actor": {"id": "u-77", "type": "user"}, "action": "UPDATE",
        "resource": {"type": "patient", "id": "p-5"},
        "attributes": {"email": "ada@example.com", "diagnosis": "influenza", "plan": "gold"}
    })
}

async fn put(api: &Api, token: &str, body: &Value) -> (StatusCode, Value) {
    let resp = api
        .http
        .put(format!("{}/api/v1/policy", api.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

async fn evaluate(api: &Api, token: &str, body: &Value) -> (StatusCode, Value) {
    let resp = api
        .post("/api/v1/policy/evaluate", token)
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

/// `(classification, encrypted, view)` of the value at `path` in an evaluation.
fn field(answer: &Value, path: &str) -> (String, bool, String) {
    let f = answer["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no field {path} in {answer}"));
    (
        f["classification"].as_str().unwrap().to_owned(),
        f["encrypted"].as_bool().unwrap(),
        f["view"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_policy_change_is_a_new_version_announced_recorded_and_applied() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let admin = stack.token(TENANT, Permission::Admin);
    let privacy = stack.token(TENANT, Permission::Privacy);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let producer = stack.token(TENANT, Permission::Producer);

    // Version 1 is the built-in default, for the admin and the data-protection officer alike.
    let default = serde_json::to_value(atp_core::policy::PolicyDocument::default()).unwrap();
    for token in [&admin, &privacy] {
        let v1 = api.get_json("/api/v1/policy", token).await;
        assert_eq!(v1, default);
        assert_eq!(v1["policyVersion"], 1);
    }

    // An invalid document is refused whole, every error at its path.
    let invalid = json!({
        "subject": "actor/id",
        "fields": [
            {"path": "/attributes/email", "classification": "personal"},
            {"path": "/nowhere", "classification": "public"}
        ],
        "retention": {"policies": {"short": {"durationSeconds": 0}}, "default": "missing"}
    });
    let (status, problem) = put(&api, &admin, &invalid).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["code"], "POLICY_INVALID");
    assert_eq!(problem["tenantId"], TENANT);
    let mut paths: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
            e["path"].as_str().unwrap()
        })
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/fields/1/path",
            "/retention/default",
            "/retention/policies/short/durationSeconds",
            "/subject"
        ],
        "{problem}"
    );
    // A shape error (an unknown classification) names its path too.
    let (status, problem) = put(
        &api,
        &admin,
        &json!({"fields": [{"path": "/action", "classification": "secret"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["path"], "/fields/0/classification");

    // Who may not change it, and what is not a document.
    #[rustfmt::skip]
    let rows = [
        refusal("a producer", reqwest::Method::PUT, "/api/v1/policy", Some(&producer), Body::Json(policy()), 403, "FORBIDDEN"),
        refusal("the data-protection officer", reqwest::Method::PUT, "/api/v1/policy", Some(&privacy), Body::Json(policy()), 403, "FORBIDDEN"),
        refusal("an auditor reading it", reqwest::Method::GET, "/api/v1/policy", Some(&auditor), Body::Empty, 403, "FORBIDDEN"),
        refusal("text/plain", reqwest::Method::PUT, "/api/v1/policy", Some(&admin), Body::Typed("text/plain", b"{}".to_vec()), 415, "UNSUPPORTED_MEDIA_TYPE"),
        refusal("not JSON", reqwest::Method::PUT, "/api/v1/policy", Some(&admin), Body::Raw(b"{\"fields\":".to_vec()), 400, "POLICY_INVALID"),
        refusal("no token", reqwest::Method::PUT, "/api/v1/policy", None, Body::Json(policy()), 401, "UNAUTHENTICATED"),
    ];
    api.assert_refusals(rows).await;
    assert_eq!(api.get_json("/api/v1/policy", &admin).await, default);

    // A valid change becomes version 2, is announced, and GET answers it.
    let tenant = TenantId::new(TENANT).unwrap();
    let mut changes = stack
        .js
        .client()
        .subscribe(atp_nats::subjects::policy_changed(&tenant))
        .await
        .unwrap();
    // The server has the subscription before the gateway publishes.
    stack.js.client().flush().await.unwrap();
    let (status, stored) = put(&api, &admin, &policy()).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["policyVersion"], 2);
    assert_eq!(stored["fields"], policy()["fields"]);
    assert_eq!(api.get_json("/api/v1/policy", &privacy).await, stored);
    let announced = tokio::time::timeout(PATIENCE, changes.next())
        .await
        .expect("the change is announced")
        .unwrap();
    let announced: Value = serde_json::from_slice(&announced.payload).unwrap();
    assert_eq!(announced, json!({"tenantId": TENANT, "policyVersion": 2}));

    // On the admin trail: what changed, by whom, the new version and the document's digest.
    let trail = eventually("the change on the admin trail", || async {
        let page = api
            .get_json("/api/v1/audit/records?sourceId=atp-admin", &auditor)
            .await;
        let items = page["items"].as_array().unwrap().clone();
        (items.len() == 1).then_some(items)
    })
    .await;
    let data = &trail[0]["record"]["event"]["data"];
    assert_eq!(data["action"], "POLICY_CHANGED", "{data}");
    assert_eq!(data["actor"]["id"], "admin:acme-admin");
    assert_eq!(data["resource"], json!({"type": "policy", "id": TENANT}));
    let attributes = &data["attributes"];
    assert_eq!(attributes["policyVersion"], 2);
    assert_eq!(attributes["previousVersion"], 1);
    assert_eq!(attributes["changed"], "fields,retention,sources");
    let digest = atp_core::Digest::of(&atp_core::canonical::to_canonical(&stored).unwrap());
    assert_eq!(attributes["documentSha256"], digest.to_string());

    // Ingest applies it: an event accepted now is stamped with version 2 and its personal and
    // sensitive values are sealed before hashing.
    let p = partition(TENANT, SOURCE);
    let mut accepted = 0;
    let record = loop {
        let resp = api
            .post("/api/v1/audit/append", &producer)
            .json(&event(&format!("pv-{accepted}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        accepted += 1;
        eventually("the event on the ledger", || async {
            (stack.ledger_len(&p).await == accepted).then_some(())
        })
        .await;
        let record = stack.ledger(&p).await.pop().unwrap();
        // The policy in force is re-read within CURRENT_TTL.
        if record.policy.policy_version == 2 || accepted > 200 {
            break record;
        }
    };
    assert_eq!(record.policy.policy_version, 2);
    assert_eq!(record.policy.classification, "sensitive");
    let attributes = &record.event["data"]["attributes"];
    assert!(attributes["email"].is_object(), "sealed: {attributes}");
    assert!(attributes["diagnosis"].is_object(), "sealed: {attributes}");
    assert_eq!(attributes["plan"], "gold");
    assert!(!record.event.to_string().contains("ada@example.com"));

    // Two changes at once never share a version: each is stored or refused as a conflict.
    let doc = policy();
    let answers = futures::future::join_all((0..4).map(|_| put(&api, &admin, &doc))).await;
    let mut versions = Vec::new();
    for (status, body) in &answers {
        match *status {
            StatusCode::OK => versions.push(body["policyVersion"].as_u64().unwrap()),
            StatusCode::CONFLICT => assert_eq!(body["code"], "POLICY_CONFLICT", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        answers.iter().filter(|(s, _)| s.is_success()).count()
    );
    let now = api.get_json("/api/v1/policy", &admin).await;
    assert_eq!(now["policyVersion"], 2 + versions.len() as u64);

    // Another tenant still has its own default, and cannot change its policy before it has an
    // admin trail to record the change on.
    let globex = stack.token("globex", Permission::Admin);
    assert_eq!(api.get_json("/api/v1/policy", &globex).await, default);
    let (status, problem) = put(&api, &globex, &policy()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "UNKNOWN_SOURCE", "{problem}");
    assert_eq!(api.get_json("/api/v1/policy", &globex).await, default);
    running.stop().await;
}

#[tokio::test]
async fn evaluate_answers_decisions_and_views_per_role_never_values() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let admin = stack.token(TENANT, Permission::Admin);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let (status, _) = put(&api, &admin, &policy()).await;
    assert_eq!(status, StatusCode::OK);

    // A whole CloudEvent: its source URI names the source, whose refinement moves the subject.
    let cloud_event = json!({
        "event": {
            "specversion": "1.0", "id": "e-1", "source": SOURCE_URI, "type": "com.acme.update",
            "time": "2026-01-01T00:00:00Z", "datacontenttype": "application/json",
            "data": event("e-1").as_object().unwrap().iter()
                .filter(|(k, _)| !matches!(k.as_str(), "sourceId" | "id"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<serde_json::Map<_, _>>()
        },
        "role": "auditor"
    });
    let (status, answer) = evaluate(&api, &auditor, &cloud_event).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["policyVersion"], 2);
    assert_eq!(answer["sourceId"], SOURCE);
    assert_eq!(answer["roles"], json!(["auditor"]));
    assert_eq!(
        answer["readable"],
        json!(["public", "internal", "confidential"])
    );
    assert_eq!(answer["classification"], "sensitive");
    assert_eq!(answer["retentionPolicyId"], "default-7y");
    assert_eq!(
        answer["subject"],
        json!({"pointer": "/resource/id", "found": true})
    );
    let s = |v: &str| v.to_owned();
    assert_eq!(
        field(&answer, "/attributes/email"),
        (s("personal"), true, s("redacted"))
    );
    assert_eq!(
        field(&answer, "/attributes/diagnosis"),
        (s("sensitive"), true, s("redacted"))
    );
    assert_eq!(field(&answer, "/action"), (s("public"), false, s("clear")));
    assert_eq!(
        field(&answer, "/attributes/plan"),
        (s("internal"), false, s("clear"))
    );
    assert_eq!(answer["fields"].as_array().unwrap().len(), 8);
    let text = answer.to_string();
    for value in [
        "ada@example.com",
        "influenza",
        "gold",
        "u-77",
        "p-5",
        "UPDATE",
    ] {
        assert!(!text.contains(value), "{value} is echoed: {text}");
    }

    // The data-protection officer's view: everything in clear; a personal value's retention.
    let short = json!({
        "event": {"type": "com.acme.update", "data": {"attributes": {"email": "x@y.z"}}},
        "sourceId": SOURCE, "role": "privacy"
    });
    let (status, answer) = evaluate(&api, &admin, &short).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        field(&answer, "/attributes/email"),
        (s("personal"), true, s("clear"))
    );
    assert_eq!(answer["retentionPolicyId"], "gdpr-2y");
    assert_eq!(
        answer["subject"],
        json!({"pointer": "/resource/id", "found": false})
    );
    // No role named: the caller's own view; no source: the tenant's rules alone.
    let (_, answer) = evaluate(
        &api,
        &auditor,
        &json!({"event": {"type": "t", "data": {"actor": {"id": "u-1"}}}}),
    )
    .await;
    assert_eq!(answer["roles"], json!(["auditor"]));
    assert_eq!(answer["sourceId"], Value::Null);
    assert_eq!(
        answer["subject"],
        json!({"pointer": "/actor/id", "found": true})
    );

    let many: serde_json::Map<String, Value> = (0..=atp_gateway::policy::MAX_EVALUATED_VALUES)
        .map(|i| (format!("k{i}"), json!(i)))
        .collect();
    let path = "/api/v1/policy/evaluate";
    let producer = stack.token(TENANT, Permission::Producer);
    #[rustfmt::skip]
    let rows = [
        refusal("a producer", reqwest::Method::POST, path, Some(&producer), Body::Json(short.clone()), 403, "FORBIDDEN"),
        refusal("no event", reqwest::Method::POST, path, Some(&auditor), Body::Json(json!({"role": "auditor"})), 400, "INVALID_REQUEST"),
        refusal("an unknown member", reqwest::Method::POST, path, Some(&auditor), Body::Json(json!({"event": {"type": "t", "data": {}}, "colour": 1})), 400, "INVALID_REQUEST"),
        refusal("a source URI nobody registered", reqwest::Method::POST, path, Some(&auditor), Body::Json(json!({"event": {"type": "t", "source": "urn:nowhere", "data": {}}})), 400, "INVALID_REQUEST"),
        refusal("a source id that is not one", reqwest::Method::POST, path, Some(&auditor), Body::Json(json!({"event": {"type": "t", "data": {}}, "sourceId": "Not One"})), 400, "INVALID_REQUEST"),
        refusal("too many values", reqwest::Method::POST, path, Some(&auditor), Body::Json(json!({"event": {"type": "t", "data": {"attributes": many}}})), 413, "TOO_LARGE"),
        refusal("text/plain", reqwest::Method::POST, path, Some(&auditor), Body::Typed("text/plain", b"{}".to_vec()), 415, "UNSUPPORTED_MEDIA_TYPE"),
    ];
    api.assert_refusals(rows).await;

    // The schema is anyone's.
    let schema = api.get_json("/api/v1/policy/schema", &producer).await;
    assert_eq!(schema["title"], "PolicyDocument");
    assert_eq!(schema, atp_core::policy::schema());
    running.stop().await;
}
