//! The HTTP API: append (single, batch, `Prefer: wait`), queries with cursors and freshness
//! headers, and Problem+JSON for bad input and bad credentials: every refusal a row of one table.

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn simplified(id: &str, actor: &str) -> Value {
    json!({
        "sourceId": SOURCE, "id": id, "actor": {"id": actor, "type": "user"}, "action": "READ",
        "resource": {"type": "Invoice", "id": "inv-7"}, "attributes": {"channel": "Web Portal"}
    })
}

#[tokio::test]
async fn append_with_wait_answers_the_record_and_a_repeat_answers_the_same_one() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Permission::Producer);
    let auditor = stack.token(TENANT, Permission::Auditor);

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

    let one = api
        .get_json(&format!("/api/v1/audit/records/{record_id}"), &auditor)
        .await;
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
    let producer = stack.token(TENANT, Permission::Producer);
    let auditor = stack.token(TENANT, Permission::Auditor);
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
        let page = api.get_json(&path, &auditor).await;
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

    let page = api
        .get_json(
            "/api/v1/audit/records?q=web%20portal&from=2026-11-23T10:00:20Z",
            &auditor,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    let other = stack.token("globex", Permission::Auditor);
    let page = api.get_json("/api/v1/audit/records", &other).await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        0,
        "another tenant sees nothing"
    );

    let keys = api.get_json("/api/v1/producers/keys", &auditor).await;
    assert_eq!(keys["keys"][0]["keyId"], KEY_ID);
    running.stop().await;
}

/// Every way the gateway refuses a request, a row each, on one stack: each answered with its
/// status and code as Problem+JSON (see [`Api::assert_refusals`] for what every row checks), and
/// none of the bad submissions leaves anything behind.
#[tokio::test]
async fn bad_requests_are_refused_with_their_problem_and_record_nothing() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Permission::Producer);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let admin = stack.token(TENANT, Permission::Admin);
    let (producer, auditor, admin) = (Some(&*producer), Some(&*auditor), Some(&*admin));

    // The bad submissions' bodies.
    let duplicate_keys = format!(r#"{{"sourceId":"{SOURCE}","id":"x","id":"y"}}"#);
    let mut unsafe_integer = simplified("n-1", "x");
    unsafe_integer["attributes"]["n"] = json!(9007199254740993u64);
    let mut no_action = simplified("m-1", "x");
    no_action.as_object_mut().unwrap().remove("action");
    let mut oversize = simplified("b-1", "x");
    oversize["attributes"]["blob"] = json!("x".repeat(70 * 1024));
    let mut other_tenant = stack.event("t-1");
    other_tenant.insert("tenantid".into(), json!("globex"));
    let other_tenant = Value::Object(stack.sign(other_tenant));
    let mut tampered = stack.sign(stack.event("s-1"));
    tampered["data"]["action"] = json!("DELETE");
    let mut unknown_key = stack.event("k-1");
    atp_core::producer::sign_structured(&mut unknown_key, &stack.producer, "nobody").unwrap();
    let mut unknown_source = simplified("u-1", "x");
    unknown_source["sourceId"] = json!("nowhere");
    let deep = format!(
        r#"{{"sourceId":"crm","id":"d-1","x":{}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let nul = br#"{"sourceId":"crm","id":"nul-1","actor":{"id":"a\u0000","type":"user"}}"#;

    const APPEND: &str = "/api/v1/audit/append";
    const RECORDS: &str = "/api/v1/audit/records";
    use Body::{Empty, Json, Raw, Typed};
    use reqwest::Method as M;
    #[rustfmt::skip]
    let rows = [
        // A submission refused for its reason (CONTRACT §2), before it reaches ingest.
        refusal("malformed JSON", M::POST, APPEND, producer, Raw(b"{\"id\":".to_vec()), 400, "MALFORMED"),
        refusal("duplicate member names", M::POST, APPEND, producer, Raw(duplicate_keys.into_bytes()), 400, "MALFORMED"),
        refusal("an integer past 2^53", M::POST, APPEND, producer, Json(unsafe_integer), 400, "MALFORMED"),
        refusal("nesting deeper than the cap", M::POST, APPEND, producer, Raw(deep.into_bytes()), 400, "MALFORMED")
            .detail_has("nesting deeper than 32"),
        refusal("U+0000 in an event", M::POST, APPEND, producer, Raw(nul.to_vec()), 400, "MALFORMED")
            .detail_has("U+0000"),
        refusal("a missing field", M::POST, APPEND, producer, Json(no_action), 400, "SCHEMA_VALIDATION_FAILED")
            .detail_has("action")
            .tenant_is(TENANT),
        refusal("an event over 64 KiB", M::POST, APPEND, producer, Json(oversize), 413, "TOO_LARGE"),
        refusal("a body over the request limit", M::POST, APPEND, producer, Raw(vec![b' '; atp_gateway::MAX_BODY + 1]), 413, "TOO_LARGE"),
        refusal("another tenant's event", M::POST, APPEND, producer, Json(other_tenant), 403, "TENANT_MISMATCH"),
        refusal("a signature over other content", M::POST, APPEND, producer, Json(Value::Object(tampered)), 400, "SIGNATURE_INVALID"),
        refusal("a key nobody registered", M::POST, APPEND, producer, Json(Value::Object(unknown_key)), 400, "UNKNOWN_KEY"),
        refusal("an unregistered source", M::POST, APPEND, producer, Json(unknown_source), 400, "UNKNOWN_SOURCE"),
        refusal("text/plain", M::POST, APPEND, producer, Typed("text/plain", b"{}".to_vec()), 415, "UNSUPPORTED_MEDIA_TYPE"),
        // Credentials and roles.
        refusal("a token that is not a JWT", M::GET, RECORDS, Some("not-a-token"), Empty, 401, "UNAUTHENTICATED"),
        refusal("no token", M::GET, RECORDS, None, Empty, 401, "UNAUTHENTICATED"),
        refusal("a producer querying", M::GET, RECORDS, producer, Empty, 403, "FORBIDDEN"),
        refusal("an auditor appending", M::POST, APPEND, auditor, Json(simplified("r-1", "x")), 403, "FORBIDDEN"),
        // Queries.
        refusal("a cursor this API did not issue", M::GET, "/api/v1/audit/records?cursor=garbage!", auditor, Empty, 400, "INVALID_CURSOR"),
        refusal("an unknown parameter", M::GET, "/api/v1/audit/records?colour=red", auditor, Empty, 400, "INVALID_QUERY"),
        refusal("no such record", M::GET, "/api/v1/audit/records/01JD0000000000000000000000", auditor, Empty, 404, "NOT_FOUND"),
        // Input PostgreSQL cannot store, and axum's own refusals, are problems too.
        refusal("U+0000 in a query", M::GET, "/api/v1/audit/records?actorId=a%00b", auditor, Empty, 400, "INVALID_REQUEST"),
        refusal("U+0000 in a JSON body", M::POST, "/api/v1/integrity/verify/record", auditor, Raw(br#"{"recordId":"x\u0000"}"#.to_vec()), 400, "INVALID_REQUEST"),
        refusal("a path parameter that is not a number", M::GET, "/api/v1/admin/dlq/not-a-number", admin, Empty, 400, "INVALID_REQUEST"),
        refusal("a method the route lacks", M::PATCH, RECORDS, auditor, Empty, 405, "METHOD_NOT_ALLOWED"),
    ];
    api.assert_refusals(rows).await;

    // A good event after them is recorded alone: the bad ones left nothing behind.
    let ok = api
        .post(APPEND, producer.unwrap())
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
    let producer = stack.token(TENANT, Permission::Producer);
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
    let acme = stack.token(TENANT, Permission::Auditor);
    let globex = stack.token("globex", Permission::Auditor);

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
