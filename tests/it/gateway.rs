//! The HTTP API: append (single, batch, `Prefer: wait`), queries with cursors and freshness
//! headers, and Problem+JSON for bad input and bad credentials.

use atp::serve::Roles;
use atp_gateway::Role;
use atp_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn simplified(id: &str, actor: &str) -> Value {
    json!({
        "sourceId": SOURCE, "id": id, "actor": {"id": actor, "type": "user"}, "action": "READ",
        "resource": {"type": "Invoice", "id": "inv-7"}, "attributes": {"channel": "Web Portal"}
    })
}

/// The headers every answer carries, errors included.
fn assert_secure_headers(h: &reqwest::header::HeaderMap) {
    assert!(h.contains_key("x-request-id"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
}

async fn problem(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_secure_headers(resp.headers());
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn append_with_wait_answers_the_record_and_a_repeat_answers_the_same_one() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Role::Producer);
    let auditor = stack.token(TENANT, Role::Auditor);

    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("prefer", "wait=20")
        .json(&simplified("h-1", "carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().contains_key("x-request-id"));
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["chainIndex"], 0);
    let record_id = created["recordId"].as_str().unwrap().to_owned();

    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("prefer", "wait=20")
        .json(&simplified("h-1", "carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "a repeat creates nothing");
    let again: Value = resp.json().await.unwrap();
    for member in ["recordId", "chainIndex", "digest"] {
        assert_eq!(
            again[member], created[member],
            "a repeat answers the same record"
        );
    }
    assert_eq!(again["idempotent"], true, "and says it is a repeat");

    // A signed CloudEvent through the gateway keeps its producer signature.
    let signed = stack.sign(stack.event("h-2"));
    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("content-type", "application/cloudevents+json")
        .json(&signed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "accepted-for-processing");
    assert_eq!(body["idempotencyKey"], format!("{TENANT}:{SOURCE}:h-2"));

    let p = partition(TENANT, SOURCE);
    eventually("both records", || async {
        (stack.projected_records(TENANT).await == 2).then_some(())
    })
    .await;
    let ledger = stack.ledger(&p).await;
    assert_eq!(
        ledger[0].producer.auth,
        format!("token:{TENANT}-producer"),
        "unsigned HTTP events are attributed to the token"
    );
    assert_eq!(ledger[1].producer.key_id.as_deref(), Some(KEY_ID));
    assert_eq!(stack.verify_chain(&p).await, 2);

    let one: Value = api
        .get(&format!("/api/v1/audit/records/{record_id}"), &auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["record"]["event"]["data"]["actor"]["id"], "carol");
    assert_eq!(
        one["digest"].as_str().unwrap(),
        atp_core::Digest::of(&atp_core::canonical::to_canonical(&one["record"]).unwrap())
            .to_string()
    );
    running.stop().await;
}

#[tokio::test]
async fn queries_filter_page_newest_first_and_report_freshness() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Role::Producer);
    let auditor = stack.token(TENANT, Role::Auditor);
    let batch: Vec<Value> = (0..25)
        .map(|i| {
            let mut e = simplified(
                &format!("q-{i:02}"),
                if i % 5 == 0 { "dave" } else { "erin" },
            );
            e["time"] = json!(format!("2026-11-23T10:00:{i:02}Z"));
            e
        })
        .chain([json!({"sourceId": SOURCE, "id": "bad"})])
        .collect();
    let resp = api
        .post("/api/v1/audit/append:batch", &producer)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MULTI_STATUS);
    let results: Value = resp.json().await.unwrap();
    assert_eq!(
        results["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == 202)
            .count(),
        25
    );
    assert_eq!(results["results"][25]["code"], "SCHEMA_VALIDATION_FAILED");
    eventually("all projected", || async {
        (stack.projected_records(TENANT).await == 25).then_some(())
    })
    .await;

    let resp = api
        .get("/api/v1/audit/records?actorId=dave", &auditor)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-watermark"));
    assert_eq!(resp.headers()["x-lag"], "0.000");
    let page: Value = resp.json().await.unwrap();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["record"]["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["q-20", "q-15", "q-10", "q-05", "q-00"],
        "newest first"
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audit/records?limit=10&cursor={c}"),
            None => "/api/v1/audit/records?limit=10".to_owned(),
        };
        let page: Value = api
            .get(&path, &auditor)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["record"]["event"]["id"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25).rev().map(|i| format!("q-{i:02}")).collect();
    assert_eq!(seen, expected, "pages cover everything once, in order");
    expected.clear();

    let page: Value = api
        .get(
            "/api/v1/audit/records?q=web%20portal&from=2026-11-23T10:00:20Z",
            &auditor,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    let other = stack.token("globex", Role::Auditor);
    let page: Value = api
        .get("/api/v1/audit/records", &other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        0,
        "another tenant sees nothing"
    );
    running.stop().await;
}

/// Sends one bad append and returns the Problem+JSON answer; checks nothing was recorded.
async fn append_problem(
    body: impl FnOnce(&Stack) -> (Option<&'static str>, Vec<u8>),
) -> (StatusCode, Value) {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Role::Producer);
    let (content_type, bytes) = body(&stack);
    let req = api
        .http
        .post(format!("{}/api/v1/audit/append", api.base))
        .bearer_auth(&producer)
        .header("content-type", content_type.unwrap_or("application/json"))
        .body(bytes);
    let answer = problem(req.send().await.unwrap()).await;
    assert!(
        answer.1["traceId"].as_str().is_some_and(|t| !t.is_empty()),
        "{}",
        answer.1
    );
    assert_eq!(answer.1["status"], answer.0.as_u16());
    // A good event after it is recorded alone: the bad one left nothing behind.
    let ok = api
        .post("/api/v1/audit/append", &producer)
        .header("prefer", "wait=20")
        .json(&simplified("fine", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(
        stack.projected_records(TENANT).await,
        1,
        "nothing bad was recorded"
    );
    running.stop().await;
    answer
}

fn json_bytes(v: &Value) -> (Option<&'static str>, Vec<u8>) {
    (None, serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn http_malformed_json_is_400_malformed() {
    let (s, p) = append_problem(|_| (None, b"{\"id\":".to_vec())).await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "MALFORMED")
    );
}

#[tokio::test]
async fn http_duplicate_keys_are_400_malformed() {
    let (s, p) = append_problem(|_| {
        (
            None,
            format!("{{\"sourceId\":\"{SOURCE}\",\"id\":\"x\",\"id\":\"y\"}}").into_bytes(),
        )
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "MALFORMED")
    );
}

#[tokio::test]
async fn http_non_i_json_number_is_400_malformed() {
    let (s, p) = append_problem(|_| {
        let mut e = simplified("n-1", "x");
        e["attributes"]["n"] = json!(9007199254740993u64);
        json_bytes(&e)
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "MALFORMED")
    );
}

#[tokio::test]
async fn http_missing_field_is_400_schema_validation_failed() {
    let (s, p) = append_problem(|_| {
        let mut e = simplified("m-1", "x");
        e.as_object_mut().unwrap().remove("action");
        json_bytes(&e)
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "SCHEMA_VALIDATION_FAILED")
    );
    assert_eq!(p["tenantId"], TENANT);
    assert!(
        p["detail"].as_str().unwrap().contains("action"),
        "names the offender: {p}"
    );
}

#[tokio::test]
async fn http_oversize_event_is_413_too_large() {
    let (s, p) = append_problem(|_| {
        let mut e = simplified("b-1", "x");
        e["attributes"]["blob"] = json!("x".repeat(70 * 1024));
        json_bytes(&e)
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE")
    );
}

#[tokio::test]
async fn http_body_over_the_request_limit_is_413_too_large() {
    let (s, p) = append_problem(|_| (None, vec![b' '; atp_gateway::MAX_BODY + 1])).await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE")
    );
}

#[tokio::test]
async fn http_tenant_mismatch_is_403() {
    let (s, p) = append_problem(|stack| {
        let mut e = stack.event("t-1");
        e.insert("tenantid".into(), json!("globex"));
        json_bytes(&Value::Object(stack.sign(e)))
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::FORBIDDEN, "TENANT_MISMATCH")
    );
}

#[tokio::test]
async fn http_bad_signature_is_400_signature_invalid() {
    let (s, p) = append_problem(|stack| {
        let mut e = stack.sign(stack.event("s-1"));
        e["data"]["action"] = json!("DELETE");
        json_bytes(&Value::Object(e))
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "SIGNATURE_INVALID")
    );
}

#[tokio::test]
async fn http_unknown_key_is_400_unknown_key() {
    let (s, p) = append_problem(|stack| {
        let mut e = stack.event("k-1");
        atp_core::producer::sign_structured(&mut e, &stack.producer, "nobody").unwrap();
        json_bytes(&Value::Object(e))
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "UNKNOWN_KEY")
    );
}

#[tokio::test]
async fn http_unknown_source_is_400_unknown_source() {
    let (s, p) = append_problem(|_| {
        let mut e = simplified("u-1", "x");
        e["sourceId"] = json!("nowhere");
        json_bytes(&e)
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "UNKNOWN_SOURCE")
    );
}

#[tokio::test]
async fn http_wrong_content_type_is_415() {
    let (s, p) = append_problem(|_| (Some("text/plain"), b"{}".to_vec())).await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
    );
}

#[tokio::test]
async fn credentials_roles_and_query_errors_get_problem_json() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Role::Producer);
    let auditor = stack.token(TENANT, Role::Auditor);

    let (s, p) = problem(
        api.get("/api/v1/audit/records", "not-a-token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    let (s, _) = problem(
        api.http
            .get(format!("{}/api/v1/audit/records", api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, p) = problem(
        api.get("/api/v1/audit/records", &producer)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let (s, p) = problem(
        api.post("/api/v1/audit/append", &auditor)
            .json(&simplified("r-1", "x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let (s, p) = problem(
        api.get("/api/v1/audit/records?cursor=garbage!", &auditor)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "INVALID_CURSOR")
    );
    let (s, p) = problem(
        api.get("/api/v1/audit/records?colour=red", &auditor)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "INVALID_QUERY")
    );
    let (s, _) = problem(
        api.get("/api/v1/audit/records/01JD0000000000000000000000", &auditor)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let keys: Value = api
        .get("/api/v1/producers/keys", &auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["keys"][0]["keyId"], KEY_ID);
    running.stop().await;
}

#[tokio::test]
async fn readyz_waits_for_a_published_signing_key() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("gateway,ingest,projector")).await;
    let api = Api::new(&running);
    let ready = api
        .http
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why: Value = ready.json().await.unwrap();
    assert!(
        why["reasons"][0].as_str().unwrap().contains("signing keys"),
        "{why}"
    );
    let integrity = stack.serve(roles("integrity")).await;
    eventually(
        "ready once the integrity role published its key",
        || async {
            let r = api
                .http
                .get(format!("{}/readyz", api.base))
                .send()
                .await
                .unwrap();
            (r.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    integrity.stop().await;
    running.stop().await;
}

#[tokio::test]
async fn the_trace_context_follows_a_submission_onto_its_ledger_or_rejected_message() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Role::Producer);
    let p = partition(TENANT, SOURCE);
    let header_of = |msgs: &[(u64, Option<async_nats::HeaderMap>, Vec<u8>)], i: usize| {
        msgs[i]
            .1
            .as_ref()
            .and_then(|h| h.get(atp_nats::headers::TRACEPARENT))
            .map(|v| v.as_str().to_owned())
    };

    // The caller's trace, through the gateway, onto the ledger.
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("prefer", "wait=20")
        .header("traceparent", theirs)
        .json(&simplified("traced", "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // No trace given: the gateway starts one.
    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("prefer", "wait=20")
        .header("traceparent", "not a traceparent")
        .json(&simplified("untraced", "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let ledger = stack
        .read_subject(atp_nats::streams::LEDGER, &atp_nats::subjects::ledger(&p))
        .await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(header_of(&ledger, 0).as_deref(), Some(theirs));
    // A refused request's problem names the caller's trace, to find its log lines.
    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("traceparent", theirs)
        .json(&json!({"sourceId": SOURCE}))
        .send()
        .await
        .unwrap();
    let (_, body) = problem(resp).await;
    assert_eq!(
        body["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{body}"
    );
    let started = header_of(&ledger, 1).expect("a trace started by the gateway");
    let parsed = atp_core::trace::TraceParent::parse(&started).expect("a valid traceparent");
    assert_ne!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");

    // A direct producer's trace, onto the rejection of its unsigned event.
    stack
        .publish_traced(
            &p,
            &stack.event("unsigned-traced"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .await;
    let rejected = eventually("the rejection", || async {
        let r = stack
            .read_subject(
                atp_nats::streams::REJECTED,
                &atp_nats::subjects::rejected(&p),
            )
            .await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(
        header_of(&rejected, 0).as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    running.stop().await;
}

/// An OIDC issuer's ES256 key, published in its JWKS, is trusted by kid; its rotation reaches
/// the running gateway without a restart, and the withdrawn key stops working.
#[tokio::test]
async fn tokens_from_an_oidc_issuer_verify_against_its_rotating_jwks() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
    use std::sync::{Arc, Mutex};

    let key = |kid: &str| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .output()
            .expect("openssl runs");
        let key = EncodingKey::from_ec_pem(&out.stdout).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        (key, jwk)
    };
    let (old, old_jwk) = key("2026-11");
    let (new, new_jwk) = key("2026-12");
    let published = Arc::new(Mutex::new(json!({ "keys": [old_jwk] })));
    let jwks = published.clone();
    let issuer = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = jwks.lock().unwrap().clone();
            async move { axum::Json(body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, issuer).await });

    let stack = Stack::start().await;
    let mut cfg = stack.serve_config(Roles::ALL);
    cfg.token_jwks = Some(url);
    let running = atp::serve::start(cfg).await.unwrap();
    let api = Api::new(&running);
    let token = |key: &EncodingKey, kid: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.to_owned());
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": atp::dev::ISSUER, "aud": atp::dev::AUDIENCE, "sub": "auditor@idp",
            "exp": now + 600, "iat": now, "tenant_id": TENANT, "roles": ["auditor"]
        });
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    let status = |t: String| {
        let api = &api;
        async move {
            api.get("/api/v1/audit/records", &t)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(token(&old, "2026-11")).await, StatusCode::OK);
    let ok = api
        .get("/api/v1/audit/records", &token(&old, "2026-11"))
        .send()
        .await
        .unwrap();
    assert_secure_headers(ok.headers());
    // The issuer rotates: the new key is fetched when a token first names it; the old one,
    // withdrawn, is refused from then on.
    *published.lock().unwrap() = json!({ "keys": [new_jwk] });
    assert_eq!(status(token(&new, "2026-12")).await, StatusCode::OK);
    let refused = api
        .get("/api/v1/audit/records", &token(&old, "2026-11"))
        .send()
        .await
        .unwrap();
    let (code, body) = problem(refused).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "the token's key is not trusted", "{body}");
    running.stop().await;
}

/// A tenant over its rate gets 429 with `Retry-After` and `X-RateLimit-*`; another tenant is not
/// affected, and answers within the rate say what is left.
#[tokio::test]
async fn a_tenant_over_its_rate_is_told_when_to_retry_and_others_are_unaffected() {
    let stack = Stack::start().await;
    let mut cfg = stack.serve_config(Roles::ALL);
    cfg.rate_limits = atp_gateway::RateLimits::default()
        .with(&["acme:query=1".to_owned()])
        .unwrap();
    let running = atp::serve::start(cfg).await.unwrap();
    let api = Api::new(&running);
    let acme = stack.token(TENANT, Role::Auditor);
    let globex = stack.token("globex", Role::Auditor);

    let first = api
        .get("/api/v1/audit/records", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-ratelimit-limit"], "1");
    assert_eq!(
        first.headers()["x-ratelimit-remaining"],
        "1",
        "a burst of two"
    );
    // Well within the second it takes to earn one more, the burst runs out.
    let mut limited = None;
    for _ in 0..5 {
        let r = api
            .get("/api/v1/audit/records", &acme)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("refused within its burst of two and five more tries");
    let h = limited.headers().clone();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-ratelimit-limit"], "1");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-reset"], "1");
    let (_, body) = problem(limited).await;
    assert_eq!(body["code"], "RATE_LIMITED");
    assert_eq!(body["tenantId"], TENANT);

    let other = api
        .get("/api/v1/audit/records", &globex)
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another tenant has its own rate"
    );
    assert_eq!(other.headers()["x-ratelimit-limit"], "100");
    let metrics = api.get_public_text("/metrics").await;
    assert!(
        metrics.contains("atp_gateway_rate_limited_total{class=\"query\"}"),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test]
async fn http_nesting_deeper_than_the_cap_is_400_malformed() {
    let (s, p) = append_problem(|_| {
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        (
            None,
            format!(r#"{{"sourceId":"crm","id":"d-1","x":{deep}}}"#).into_bytes(),
        )
    })
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(p["code"], "MALFORMED");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("nesting deeper than 32"),
        "{p}"
    );
}

#[tokio::test]
async fn unstorable_or_mistyped_input_gets_a_problem_not_a_server_error() {
    let (s, p) = append_problem(|_| {
        (
            None,
            br#"{"sourceId":"crm","id":"nul-1","actor":{"id":"a\u0000","type":"user"}}"#.to_vec(),
        )
    })
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("MALFORMED"))
    );
    assert!(p["detail"].as_str().unwrap().contains("U+0000"), "{p}");

    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let admin = stack.token(TENANT, Role::Admin);
    let auditor = stack.token(TENANT, Role::Auditor);
    for resp in [
        api.get("/api/v1/audit/records?actorId=a%00b", &auditor),
        api.post("/api/v1/integrity/verify/record", &auditor)
            .header("content-type", "application/json")
            .body(r#"{"recordId":"x\u0000"}"#),
        // axum's own refusals (a path parameter that is not a number) are problems too.
        api.get("/api/v1/admin/dlq/not-a-number", &admin),
    ] {
        let (s, p) = problem(resp.send().await.unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{p}");
        assert_eq!(p["code"], "INVALID_REQUEST", "{p}");
    }
    let (s, p) = problem(
        api.http
            .patch(format!("{}/api/v1/audit/records", api.base))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("METHOD_NOT_ALLOWED"))
    );
    running.stop().await;
}
