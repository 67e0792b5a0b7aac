//! `GET /metrics`: every role's instruments in Prometheus text, with bounded labels.

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;

/// The value of the first sample line starting with `series` (name and labels), if any.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_every_role_did_without_tenant_labels() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);
    for i in 0..3 {
        let ev = stack.sign(stack.event(&format!("m-{i}")));
        stack.publish(&p, &ev).await;
    }
    stack.publish(&p, &stack.event("unsigned")).await;
    eventually("records projected and checkpointed", || async {
        (stack.projected_records(TENANT).await == 3 && stack.checkpoint_size(&p).await == 3)
            .then_some(())
    })
    .await;
    let auditor = stack.token(TENANT, Permission::Auditor);
    let page = api.get_json("/api/v1/audit/records", &auditor).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);

    let text = eventually("the metrics caught up", || async {
        let text = api.get_public_text("/metrics").await;
        (sample(&text, "atp_integrity_checkpoints_total").unwrap_or(0.0) >= 1.0).then_some(text)
    })
    .await;
    let at_least = |series: &str, n: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(v >= n, "{series} is {v}, expected at least {n}");
    };
    at_least("atp_ingest_events_total{outcome=\"accepted\"}", 3.0);
    at_least("atp_ingest_events_total{outcome=\"rejected\"}", 1.0);
    at_least(
        "atp_ingest_rejections_total{reason=\"SIGNATURE_MISSING\"}",
        1.0,
    );
    at_least("atp_ingest_batch_duration_seconds_count", 1.0);
    // Stage latencies: one observation per record, and per row of each projection.
    at_least("atp_ingest_latency_seconds_count", 3.0);
    at_least(
        "atp_projector_latency_seconds_count{projection=\"records\"}",
        3.0,
    );
    at_least(
        "atp_projector_latency_seconds_count{projection=\"rejections\"}",
        1.0,
    );
    assert_eq!(
        sample(&text, "atp_exports_queue{state=\"pending\"}"),
        Some(0.0),
        "the exporter's queue is empty"
    );
    at_least("atp_projector_rows_total{projection=\"records\"}", 3.0);
    at_least("atp_projector_rows_total{projection=\"rejections\"}", 1.0);
    assert_eq!(
        sample(&text, "atp_projector_lag_seconds{projection=\"records\"}"),
        Some(0.0),
        "caught up: no lag"
    );
    at_least("atp_integrity_checkpoint_lag_seconds_count", 1.0);
    at_least(
        "atp_http_requests_total{route=\"/api/v1/audit/records\",status=\"200\"}",
        1.0,
    );
    at_least(
        "atp_http_request_duration_seconds_count{route=\"/api/v1/audit/records\"}",
        1.0,
    );
    assert!(
        !text.contains(TENANT) && !text.contains(SOURCE),
        "no tenant or source ids in labels:\n{text}"
    );
    assert!(
        running.metrics_addr.is_none(),
        "the gateway serves them itself"
    );

    // A process without the gateway serves its metrics on its own listener.
    let worker = stack.serve(Roles::parse("exporter").unwrap()).await;
    let addr = worker.metrics_addr.expect("a metrics listener");
    let resp = api
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("atp_ingest_events_total")
    );
    worker.stop().await;
    running.stop().await;
}

/// The ingest lag figure is 0 while ingest keeps up, grows while submissions wait for a stopped
/// ingest, and returns to 0 once ingest has handled them: what `AtpIngestLag` watches.
#[tokio::test]
async fn the_ingest_lag_grows_while_submissions_wait_and_clears_when_handled() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    // One attestation key for every run, so the gateway may run without ingest.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let serve = |list: &str| {
        let mut cfg = stack.serve_config(roles(list));
        cfg.attestation_key = Some(key.clone());
        atp::serve::start(cfg)
    };
    let lag = |api: Api| async move {
        sample(
            &api.get_public_text("/metrics").await,
            "atp_ingest_lag_seconds",
        )
    };

    let running = serve("gateway,ingest").await.unwrap();
    stack.publish(&p, &stack.sign(stack.event("lag-1"))).await;
    eventually("the first event recorded and the lag 0", || async {
        let caught_up = stack.ledger_len(&p).await == 1;
        (caught_up && lag(Api::new(&running)).await == Some(0.0)).then_some(())
    })
    .await;
    running.stop().await;

    // Ingest is down; a submission waits.
    let gateway = serve("gateway").await.unwrap();
    stack.publish(&p, &stack.sign(stack.event("lag-2"))).await;
    let first = eventually("a lag while the submission waits", || async {
        lag(Api::new(&gateway)).await.filter(|l| *l > 0.0)
    })
    .await;
    eventually("the lag growing", || async {
        lag(Api::new(&gateway)).await.filter(|l| *l > first)
    })
    .await;
    gateway.stop().await;

    let running = serve("gateway,ingest").await.unwrap();
    eventually("the waiting event recorded and the lag 0 again", || async {
        let caught_up = stack.ledger_len(&p).await == 2;
        (caught_up && lag(Api::new(&running)).await == Some(0.0)).then_some(())
    })
    .await;
    running.stop().await;
}
