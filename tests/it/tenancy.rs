//! One tenant is invisible to another: through every query endpoint, and in PostgreSQL itself,
//! where row-level security confines the gateway's role to the tenant its request names
//! (ADR 0009).

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const OTHER: &str = "globex";
const OTHER_URI: &str = "https://crm.globex.example/core";
const OTHER_KEY: &str = "globex-crm-1";

/// Three records and one rejection per tenant, projected and checkpointed.
async fn two_tenants(stack: &Stack) {
    stack.register_tenant(OTHER, OTHER_URI, OTHER_KEY).await;
    for i in 0..3 {
        stack
            .publish(
                &partition(TENANT, SOURCE),
                &stack.sign(stack.event(&format!("{TENANT}-{i}"))),
            )
            .await;
        let mut ev = atp_core::producer::example_event(
            &format!("{OTHER}-{i}"),
            OTHER_URI,
            chrono::Utc::now(),
            "mallory",
            "READ",
        );
        atp_core::producer::sign_structured(&mut ev, &stack.producer, OTHER_KEY).unwrap();
        stack.publish(&partition(OTHER, SOURCE), &ev).await;
    }
    stack
        .publish(&partition(TENANT, SOURCE), &stack.event("acme-unsigned"))
        .await;
    let unsigned = atp_core::producer::example_event(
        "globex-unsigned",
        OTHER_URI,
        chrono::Utc::now(),
        "mallory",
        "READ",
    );
    stack.publish(&partition(OTHER, SOURCE), &unsigned).await;
    eventually("both tenants projected and checkpointed", || async {
        let done = stack.projected_records(TENANT).await == 3
            && stack.projected_records(OTHER).await == 3
            && stack.checkpoint_size(&partition(TENANT, SOURCE)).await == 3
            && stack.checkpoint_size(&partition(OTHER, SOURCE)).await == 3;
        let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM rejections")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
        (done && rejected == 2).then_some(())
    })
    .await;
}

fn ids(page: &Value, field: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_str().unwrap().to_owned())
        .collect()
}

async fn status(resp: reqwest::RequestBuilder) -> StatusCode {
    resp.send().await.unwrap().status()
}

#[tokio::test]
async fn no_query_endpoint_shows_one_tenant_another_tenants_rows() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    two_tenants(&stack).await;
    let acme = stack.token(TENANT, Permission::Auditor);
    let globex = stack.token(OTHER, Permission::Auditor);

    // Records: each sees its own three.
    let mine = api.get_json("/api/v1/audit/records", &acme).await;
    let acme_ids = ids(&mine, "recordId");
    assert_eq!(acme_ids.len(), 3);
    let theirs = api.get_json("/api/v1/audit/records", &globex).await;
    assert_eq!(ids(&theirs, "tenantId"), vec![OTHER; 3]);

    // A cursor minted for acme, replayed by globex, pages through globex's rows only.
    let first = api.get_json("/api/v1/audit/records?limit=1", &acme).await;
    let cursor = first["nextCursor"].as_str().unwrap();
    let replayed = api
        .get_json(&format!("/api/v1/audit/records?cursor={cursor}"), &globex)
        .await;
    for tenant in ids(&replayed, "tenantId") {
        assert_eq!(tenant, OTHER);
    }
    for id in ids(&replayed, "recordId") {
        assert!(!acme_ids.contains(&id), "{id} leaked");
    }

    // One of acme's records, asked for by globex: not found, by every route that takes an id.
    let id = &acme_ids[0];
    for path in [
        format!("/api/v1/audit/records/{id}"),
        format!("/api/v1/audit/records/{id}/proof"),
    ] {
        assert_eq!(status(api.get(&path, &globex)).await, StatusCode::NOT_FOUND);
    }
    assert_eq!(
        status(
            api.post("/api/v1/integrity/verify/record", &globex)
                .json(&json!({ "recordId": id }))
        )
        .await,
        StatusCode::NOT_FOUND
    );
    // Another tenant's partition by name: refused.
    for path in [
        format!("/api/v1/integrity/checkpoints/{TENANT}/{SOURCE}"),
        format!("/api/v1/integrity/consistency/{TENANT}/{SOURCE}?from=1"),
    ] {
        assert_eq!(status(api.get(&path, &globex)).await, StatusCode::FORBIDDEN);
    }
    // The range a token verifies is its own tenant's.
    let range = api
        .post_json(
            "/api/v1/integrity/verify/range",
            &globex,
            &json!({ "sourceId": SOURCE }),
        )
        .await;
    assert_eq!(range["checked"], 3, "{range}");

    // Rejections.
    let rejected = api.get_json("/api/v1/audit/rejections", &globex).await;
    assert_eq!(ids(&rejected, "eventId"), vec!["globex-unsigned"]);

    // Exports: acme's is neither listed, shown nor downloadable for globex.
    let resp = api
        .post("/api/v1/exports", &acme)
        .json(&json!({ "selection": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let export: Value = resp.json().await.unwrap();
    let export_id = export["exportId"].as_str().unwrap();
    eventually("acme's export completes", || async {
        let s = api
            .get_json(&format!("/api/v1/exports/{export_id}"), &acme)
            .await;
        (s["status"] == "completed").then_some(())
    })
    .await;
    let listed = api.get_json("/api/v1/exports", &globex).await;
    assert!(!listed.to_string().contains(export_id), "{listed}");
    for path in [
        format!("/api/v1/exports/{export_id}"),
        format!("/api/v1/exports/{export_id}/download"),
    ] {
        assert_eq!(status(api.get(&path, &globex)).await, StatusCode::NOT_FOUND);
    }
    running.stop().await;
}

#[tokio::test]
async fn the_gateways_database_role_sees_only_the_tenant_its_request_names() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    two_tenants(&stack).await;
    running.stop().await;

    let gateway = atp_store::connect_gateway(
        &stack.database_url,
        Some(&stack.gateway_database_url),
        2,
        atp_gateway::deadline::STATEMENT_TIMEOUT,
    )
    .await
    .expect("the gateway's login is accepted");

    // It cannot step past row-level security: not a superuser, no BYPASSRLS, owns nothing,
    // and every tenant table forces RLS on its owner too.
    let (superuser, bypass): (bool, bool) =
        sqlx::query_as("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&gateway)
            .await
            .unwrap();
    assert!(!superuser && !bypass);
    let unforced: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class \
         WHERE relname IN ('records', 'rejections', 'merkle_tiles', 'merkle_logs', 'checkpoints', 'exports') \
         AND NOT (relrowsecurity AND relforcerowsecurity)",
    )
    .fetch_all(&gateway)
    .await
    .unwrap();
    assert!(unforced.is_empty(), "{unforced:?}");

    // Statements with no tenant filter at all: the database does the filtering.
    let count = |table: &'static str| {
        let gateway = gateway.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&gateway)
            .await
            .unwrap()
        }
    };
    for table in ["records", "rejections", "checkpoints", "merkle_logs"] {
        assert_eq!(count(table).await, 0, "{table} outside any tenant");
    }
    let (records, foreign) = atp_store::as_tenant(OTHER, async {
        let records = count("records").await;
        let foreign: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM records r FULL JOIN checkpoints c USING (tenant_id) \
             WHERE coalesce(r.tenant_id, c.tenant_id) <> $1",
        )
        .bind(OTHER)
        .fetch_one(&gateway)
        .await
        .unwrap();
        (records, foreign)
    })
    .await;
    assert_eq!((records, foreign), (3, 0));

    // It writes nothing but export requests, and those only for its tenant.
    let write = atp_store::as_tenant(OTHER, async {
        sqlx::query("UPDATE records SET actor_id = 'eve'")
            .execute(&gateway)
            .await
    })
    .await;
    assert!(write.is_err(), "the gateway updated records");
    let foreign_export = atp_store::as_tenant(OTHER, async {
        sqlx::query(
            "INSERT INTO exports (export_id, tenant_id, requested_by, requested_at, selection) \
             VALUES ('x', $1, 'mallory', now(), '{}')",
        )
        .bind(TENANT)
        .execute(&gateway)
        .await
    })
    .await;
    let refusal = foreign_export.unwrap_err().to_string();
    assert!(refusal.contains("row-level security"), "{refusal}");

    // And a gateway configured with a role that could read past it refuses to start.
    let err = atp_store::connect_gateway(
        &stack.database_url,
        Some(&stack.database_url),
        1,
        atp_gateway::deadline::STATEMENT_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, atp_store::StoreError::Unsafe(_)), "{err}");
}
