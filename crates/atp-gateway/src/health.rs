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
