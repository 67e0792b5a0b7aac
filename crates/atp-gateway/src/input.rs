//! Input the read models cannot store, refused with 400 `INVALID_REQUEST`: U+0000 in a path, a
//! query or a JSON body. (Appends are checked by event admission, with the rest of the
//! submission rules.)
//!
//! This runs after authentication: a body is read (and so buffered) only for a caller with a
//! verified token, within its tenant's rate. An unauthenticated request passes on unread, to be
//! refused 401 by its handler before any extractor touches the body.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::problem::{Problem, ProblemCode};

/// Whether a body read failed because it passed the request limit (an error of
/// `http_body_util::Limited`, somewhere in the chain) rather than because the client broke off.
pub fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The answer to a body that could not be read: 413 `TOO_LARGE` past the limit, else 400.
pub fn unreadable(e: &axum::Error) -> Response {
    if over_limit(e) {
        return Problem::new(ProblemCode::TooLarge, "the request body is over the limit")
            .into_response();
    }
    Problem::new(
        ProblemCode::InvalidRequest,
        "the request body could not be read",
    )
    .into_response()
}

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
    let authenticated = req.extensions().get::<Principal>().is_some();
    let append = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .is_some_and(|r| r.as_str().starts_with("/api/v1/audit/append"));
    if !json || !authenticated || append {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    // The body limit layer outside bounds what this buffers, while it reads.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return unreadable(&e),
    };
    if let Some(at) = atp_core::canonical::nul_at(&bytes) {
        return refused(&format!("the body holds U+0000 (at byte {at})"));
    }
    next.run(Request::from_parts(parts, bytes.into())).await
}

fn refused(detail: &str) -> Response {
    Problem::new(
        ProblemCode::InvalidRequest,
        format!("{detail}, which ATP cannot store"),
    )
    .into_response()
}
