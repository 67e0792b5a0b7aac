//! `/healthz` (the process answers) and `/readyz` (its dependencies answer too).

use atp_core::trace::TraceParent;
use atp_nats::headers;
use atp_telemetry::telemetry;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::PgPool;
use tracing::Instrument;

use crate::Bus;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(bus): State<Bus>, State(db): State<PgPool>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = atp_nats::streams::check(&bus.js).await {
        problems.push(format!("nats: {e}"));
    }
    if let Err(e) = atp_store::check_schema(&db).await {
        problems.push(format!("postgresql: {e}"));
    }
    // Proofs and exports are only as good as a published checkpoint key.
    match atp_nats::signing_keys::list(&bus.signing_keys).await {
        Ok(keys) if keys.iter().any(atp_core::keys::PublishedKey::is_active) => {}
        Ok(_) => problems.push(
            "signing keys: no active checkpoint key is published yet (is the integrity role running?)"
                .to_owned(),
        ),
        Err(e) => problems.push(format!("signing keys: {e}")),
    }
    if problems.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reasons": problems})),
        )
            .into_response()
    }
}

/// `GET /metrics`: every role's instruments in this process, as Prometheus text. Labels carry
/// no tenant ids and no personal data. Projector and ingest lag are measured at scrape time,
/// from the streams, the watermarks and ingest's hints, so they show a stalled role wherever
/// that runs; so is the age of the token issuer's keys.
pub async fn metrics(
    State(bus): State<Bus>,
    State(db): State<PgPool>,
    State(auth): State<std::sync::Arc<crate::auth::AuthConfig>>,
) -> impl IntoResponse {
    let m = atp_telemetry::metrics::metrics();
    if let Some(age) = auth.jwks_age() {
        m.jwks_age_seconds.record(age.as_secs_f64(), &[]);
    }
    for (projection, stream) in [
        (atp_store::projection::RECORDS, atp_nats::streams::LEDGER),
        (
            atp_store::projection::REJECTIONS,
            atp_nats::streams::REJECTED,
        ),
    ] {
        if let Some(lag) = crate::query::projection_lag(&bus, &db, projection, stream).await {
            m.projector_lag_seconds.record(
                lag,
                &[atp_telemetry::metrics::label("projection", projection)],
            );
        }
    }
    if let Ok(state) = atp_nats::progress::ingress_state(&bus.js).await {
        if let Some(lag) = state.lag {
            m.ingest_lag_seconds.record(lag, &[]);
        }
        m.ingress_fill.record(state.fill, &[]);
    }
    if let Ok(depth) = atp_nats::dlq::depth(&bus.js).await {
        m.dlq_depth.record(depth, &[]);
    }
    if let Ok(Some((pending, in_progress))) = atp_nats::exports::queue(&bus.js).await {
        let state = |s: &'static str| [atp_telemetry::metrics::label("state", s)];
        m.export_queue.record(pending, &state("pending"));
        m.export_queue.record(in_progress, &state("in_progress"));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        atp_telemetry::metrics::render(),
    )
}

/// Every answer: an HTTP server span (child of the caller's `traceparent`; a request without
/// one is given one, so its log lines and what it publishes share a trace id), and counts and
/// times by route template and status (bounded labels).
pub async fn observe(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "HTTP",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace.id = tracing::field::Empty,
        tenant.id = tracing::field::Empty,
        edition = tracing::field::Empty,
        request.id = tracing::field::Empty,
    );
    if let Some(id) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        span.record("request.id", id);
    }
    let (incoming, state) = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        (
            header(headers::TRACEPARENT).and_then(TraceParent::parse),
            header(headers::TRACESTATE).map(str::to_owned),
        )
    };
    let trace_id = match incoming {
        Some(parent) => {
            telemetry::follow(&span, &parent, state.as_deref());
            parent.trace_id_hex()
        }
        None => match telemetry::traceparent_of(&span) {
            Some(own) => own.trace_id_hex(),
            None => {
                let mut random = [0u8; 24];
                rand::fill(&mut random);
                let started = TraceParent::start(random);
                if let Ok(v) = axum::http::HeaderValue::from_str(&started.header()) {
                    req.headers_mut().insert(headers::TRACEPARENT, v);
                }
                started.trace_id_hex()
            }
        },
    };
    span.record("trace.id", trace_id.as_str());
    let started = std::time::Instant::now();
    let resp = crate::problem::TRACE_ID
        .scope(trace_id, next.run(req).instrument(span.clone()))
        .await;
    let m = atp_telemetry::metrics::metrics();
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    m.http_requests.add(
        1,
        &[
            atp_telemetry::metrics::label("route", route.clone()),
            atp_telemetry::metrics::label("status", status.to_string()),
        ],
    );
    m.http_seconds.record(
        started.elapsed().as_secs_f64(),
        &[atp_telemetry::metrics::label("route", route)],
    );
    resp
}
