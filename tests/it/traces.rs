//! One trace follows a record from the gateway through ingest to the read model: spans captured
//! in memory, joined by their parent ids.

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use tracing_subscriber::layer::SubscriberExt;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn one<'a>(spans: &'a [SpanData], name: &str, trace: &str) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.span_context.trace_id().to_string() == trace)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span in trace {trace}: {spans:#?}"
    );
    found[0]
}

#[tokio::test]
async fn one_trace_spans_gateway_ingest_projector_and_integrity_and_exports_join_theirs() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(atp_telemetry::telemetry::otel_layer(&provider)),
    )
    .expect("nextest runs each test in its own process");

    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let producer = stack.token(TENANT, Permission::Producer);
    let finished = |trace: &'static str| {
        let exporter = exporter.clone();
        async move {
            let spans = exporter.get_finished_spans().unwrap();
            spans
                .iter()
                .any(|s| {
                    s.name == "project.record" && s.span_context.trace_id().to_string() == trace
                })
                .then_some(spans)
        }
    };

    // Through the gateway, joining the caller's trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = api
        .post("/api/v1/audit/append", &producer)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("prefer", "wait=20")
        .json(&serde_json::json!({
            "sourceId": SOURCE, "id": "traced-1", "actor": {"id": "alice", "type": "user"},
            "action": "READ", "resource": {"type": "Invoice", "id": "inv-7"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    let spans = eventually("the projector's span", || finished(trace)).await;
    let http = one(&spans, "POST /api/v1/audit/append", trace);
    let ingest = one(&spans, "ingest.record", trace);
    let project = one(&spans, "project.record", trace);
    let integrity = eventually("the integrity span", || async {
        let spans = exporter.get_finished_spans().unwrap();
        spans
            .iter()
            .find(|s| {
                s.name == "integrity.record" && s.span_context.trace_id().to_string() == trace
            })
            .cloned()
    })
    .await;
    assert_eq!(integrity.parent_span_id, ingest.span_context.span_id());
    assert_eq!(
        http.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        "the server span is the caller's child"
    );
    assert_eq!(ingest.parent_span_id, http.span_context.span_id());
    assert_eq!(project.parent_span_id, ingest.span_context.span_id());
    assert_eq!(
        attr(http, "http.route").as_deref(),
        Some("/api/v1/audit/append")
    );
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        attr(http, "tenant.id").as_deref(),
        Some(TENANT),
        "from the token"
    );
    for s in [ingest, project] {
        assert_eq!(attr(s, "tenant.id").as_deref(), Some(TENANT), "{s:#?}");
        assert_eq!(attr(s, "messaging.system").as_deref(), Some("nats"));
    }
    assert_eq!(attr(ingest, "event.id").as_deref(), Some("traced-1"));
    assert_eq!(attr(ingest, "outcome").as_deref(), Some("recorded"));
    assert_eq!(attr(ingest, "policy.version").as_deref(), Some("1"));
    assert_eq!(
        attr(project, "db.system.name").as_deref(),
        Some("postgresql")
    );
    assert_eq!(
        attr(project, "db.collection.name").as_deref(),
        Some("records")
    );

    // A direct producer's trace on NATS.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let p = partition(TENANT, SOURCE);
    stack
        .publish_traced(
            &p,
            &stack.sign(stack.event("traced-2")),
            &format!("00-{trace}-b7ad6b7169203331-01"),
        )
        .await;
    let spans = eventually("the projector's span", || finished(trace)).await;
    let ingest = one(&spans, "ingest.record", trace);
    let project = one(&spans, "project.record", trace);
    assert_eq!(
        ingest.parent_span_id,
        SpanId::from_hex("b7ad6b7169203331").unwrap()
    );
    assert_eq!(project.parent_span_id, ingest.span_context.span_id());

    // An export joins the trace of the request that asked for it.
    let trace = "1bf92f3577b34da6a3ce929d0e0e4731";
    let resp = api
        .post("/api/v1/exports", &stack.token(TENANT, Permission::Auditor))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"selection": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let package = eventually("the exporter's span", || async {
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| s.name == "export.package" && s.span_context.trace_id().to_string() == trace)
    })
    .await;
    let spans = exporter.get_finished_spans().unwrap();
    let http = one(&spans, "POST /api/v1/exports", trace);
    assert_eq!(package.parent_span_id, http.span_context.span_id());
    assert_eq!(attr(&package, "tenant.id").as_deref(), Some(TENANT));
    running.stop().await;
}

/// The `atp` binary ships its spans over OTLP/HTTP when (and only when) an endpoint is set: a
/// stand-in collector receives a protobuf export naming the producer's trace.
#[tokio::test]
async fn the_binary_exports_spans_over_otlp_when_configured() {
    use std::sync::{Arc, Mutex};

    /// Path, content type and body of each request the collector received.
    type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;
    let received: Received = Arc::default();
    let sink = received.clone();
    let collector = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                sink.lock()
                    .unwrap()
                    .push((uri.path().to_owned(), ct, body.to_vec()));
                axum::http::StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let stack = Stack::start().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let mut worker = stack.spawn_serve(
        "ingest,projector",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        &log,
    );

    let trace = [0x5au8; 16];
    let p = partition(TENANT, SOURCE);
    stack
        .publish_traced(
            &p,
            &stack.sign(stack.event("exported")),
            &format!("00-{}-b7ad6b7169203331-01", hex::encode(trace)),
        )
        .await;
    let (path, content_type) = eventually("an OTLP export naming the trace", || {
        assert_running(&mut worker, &log);
        let found = received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, _, body)| body.windows(16).any(|w| w == trace))
            .map(|(path, ct, _)| (path.clone(), ct.clone()));
        async move { found }
    })
    .await;
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    worker.start_kill().unwrap();
}
