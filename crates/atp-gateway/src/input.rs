//! Input the read models cannot store, refused at the door with 400 `INVALID_REQUEST`: U+0000
//! in a path, a query or a JSON body. (Appends are checked by event admission, with the rest
//! of the submission rules.)

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

pub async fn refuse_nul(req: Request, next: Next) -> Response {
    let raw = req.uri().path_and_query().map_or("", |p| p.as_str());
    if raw.contains("%00") {
        return refused("the path or query holds U+0000");
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json || req.uri().path().starts_with("/api/v1/audit/append") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // The body limit layer outside bounds what this buffers.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_LARGE",
                "the request body is over the limit",
            )
            .into_response();
        }
    };
    if let Some(at) = atp_core::canonical::nul_at(&bytes) {
        return refused(&format!("the body holds U+0000 (at byte {at})"));
    }
    next.run(Request::from_parts(parts, bytes.into())).await
}

fn refused(detail: &str) -> Response {
    Problem::bad_request(
        "INVALID_REQUEST",
        format!("{detail}, which ATP cannot store"),
    )
    .into_response()
}
