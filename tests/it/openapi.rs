//! The OpenAPI document is the router's: every documented operation is served, and a fuzzer
//! driven by it finds no server error and no answer outside the document.

use std::time::Duration;

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_gateway::auth::Claims;
use atp_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A token with every role, so the fuzzer reaches every handler's own checks.
fn all_roles(stack: &Stack) -> String {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        iss: atp::dev::ISSUER.to_owned(),
        aud: atp::dev::AUDIENCE.to_owned(),
        sub: "fuzzer".to_owned(),
        exp: now + 3600,
        nbf: Some(now),
        iat: Some(now),
        tenant_id: TENANT.to_owned(),
        roles: vec![Permission::Producer, Permission::Auditor, Permission::Admin],
        edition: atp_core::edition::Edition::Enterprise,
    };
    atp_gateway::auth::mint(&stack.issuer, atp::dev::ISSUER_KID, &claims).unwrap()
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let served: Value =
        serde_json::from_str(&api.get_public_text("/api/v1/openapi.json").await).unwrap();
    assert_eq!(
        served,
        serde_json::to_value(atp_gateway::openapi()).unwrap()
    );

    let token = all_roles(&stack);
    let mut operations = 0;
    for (path, item) in served["paths"].as_object().unwrap() {
        // Path parameters filled with something of the right type.
        let concrete = path
            .replace("{seq}", "1")
            .replace("{tenant_id}", TENANT)
            .replace("{source_id}", SOURCE)
            .replace("{record_id}", "01JDNOSUCHRECORD0000000000")
            .replace("{export_id}", "01JDNOSUCHEXPORT0000000000");
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = api
                .http
                .request(method.clone(), format!("{}/api/v1{concrete}", api.base))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                let p: Value = resp.json().await.unwrap();
                assert_ne!(
                    p["detail"], "no such route",
                    "{method} {path} is documented, not served"
                );
            }
            operations += 1;
        }
    }
    assert_eq!(operations, 35);
    running.stop().await;
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let Ok(schemathesis) = std::env::var("ATP_SCHEMATHESIS") else {
        eprintln!(
            "skipped: ATP_SCHEMATHESIS is not set; ops/bin/test installs schemathesis and sets it"
        );
        return;
    };
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    // Something to find: records, a rejection, a checkpoint.
    for i in 0..5 {
        stack
            .publish(
                &partition(TENANT, SOURCE),
                &stack.sign(stack.event(&format!("st-{i}"))),
            )
            .await;
    }
    stack
        .publish(&partition(TENANT, SOURCE), &stack.event("st-unsigned"))
        .await;
    eventually("records projected and checkpointed", || async {
        (stack.checkpoint_size(&partition(TENANT, SOURCE)).await == 5).then_some(())
    })
    .await;

    let report = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&schemathesis)
        .args([
            "run",
            &format!("{}/api/v1/openapi.json", api.base),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {}", all_roles(&stack)),
            "--max-examples",
            "15",
            "--max-time",
            "180",
            "--workers",
            "1",
            "--request-timeout",
            "45",
            "--seed",
            "4",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(report.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(420), run)
        .await
        .expect("schemathesis stays within its time budget")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    running.stop().await;
}

/// A client generated from the document by an outside generator (openapi-typescript, in
/// `sdk/api-typescript`, built by `ops/bin/install-api-typescript`, which `ops/bin/test` runs
/// and names in `ATP_API_TYPESCRIPT`) works against the live gateway: it pages through every
/// record by cursor, fetches a proof and the signing keys, and reads a problem's `code`. Its
/// own tests (run here too) compile only while the bodies they name are typed.
#[tokio::test]
async fn a_client_generated_from_the_document_reads_records_proofs_and_problems() {
    let Ok(client) = std::env::var("ATP_API_TYPESCRIPT") else {
        eprintln!(
            "skipped: ATP_API_TYPESCRIPT is not set; ops/bin/test generates and builds the \
             TypeScript API client (ops/bin/install-api-typescript) and sets it"
        );
        return;
    };
    let client = std::path::PathBuf::from(client);
    let unit = std::process::Command::new("node")
        .args(["--test", "dist/test/"])
        .current_dir(&client)
        .output()
        .expect("node runs");
    assert!(
        unit.status.success(),
        "the API client's tests: {}",
        String::from_utf8_lossy(&unit.stdout)
    );

    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);
    for i in 0..5 {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("gen-{i}"))))
            .await;
    }
    eventually("records projected and checkpointed", || async {
        (stack.checkpoint_size(&p).await == 5).then_some(())
    })
    .await;
    let token = stack.token(TENANT, Permission::Auditor);
    let page = api
        .get_json("/api/v1/audit/records?limit=1000", &token)
        .await;
    let ids: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recordId"].clone())
        .collect();
    assert_eq!(ids.len(), 5);

    let out = tokio::process::Command::new("node")
        .arg(client.join("dist/live/live.js"))
        .env("ATP_URL", &api.base)
        .env("ATP_TOKEN", &token)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the live run ends within a minute")
        .expect("node runs");
    assert!(
        out.status.success(),
        "the generated client's live run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Pages of two: three requests, newest first, as the gateway's own page lists them.
    assert_eq!(summary["recordIds"], Value::Array(ids.clone()), "{summary}");
    assert_eq!(summary["proof"]["recordId"], ids[0]);
    assert_eq!(summary["proof"]["treeSize"], 5);
    assert_eq!(
        summary["proof"]["leafIndex"], 4,
        "the newest record is the last leaf"
    );
    assert!(summary["proof"]["hashes"].as_u64().unwrap() > 0);
    assert_eq!(summary["keyIds"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["missing"]["status"], 404);
    assert_eq!(summary["missing"]["code"], "NOT_FOUND");
    running.stop().await;
}
