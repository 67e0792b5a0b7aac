//! `/healthz` (the process answers) and `/readyz` (its dependencies answer too).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::PgPool;

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
/// no tenant ids and no personal data. Projector lag is measured at scrape time, from the
/// streams and the watermarks, so it shows a stalled projector wherever that runs.
pub async fn metrics(State(bus): State<Bus>, State(db): State<PgPool>) -> impl IntoResponse {
    let m = atp_runtime::metrics::metrics();
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
                &[atp_runtime::metrics::label("projection", projection)],
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        atp_runtime::metrics::render(),
    )
}

/// Counts and times every answer by route template and status (bounded labels).
pub async fn observe(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = atp_runtime::metrics::metrics();
    let status = resp.status().as_u16().to_string();
    m.http_requests.add(
        1,
        &[
            atp_runtime::metrics::label("route", route.clone()),
            atp_runtime::metrics::label("status", status),
        ],
    );
    m.http_seconds.record(
        started.elapsed().as_secs_f64(),
        &[atp_runtime::metrics::label("route", route)],
    );
    resp
}
