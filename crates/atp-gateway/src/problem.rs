//! Problem+JSON (RFC 9457) answers, from one code table.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

tokio::task_local! {
    /// The request id of the request being served: a problem's `traceId` when the request has
    /// no trace yet (it matched no route).
    static REQUEST_ID: String;
    /// The W3C trace id of the request being served (the caller's, or one the gateway
    /// started), so a problem's `traceId` finds the request's log lines and spans.
    pub static TRACE_ID: String;
}

/// Runs the rest of the stack with the request id in scope.
pub async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    REQUEST_ID
        .scope(id, async move { secure(shape(next.run(req).await).await) })
        .await
}

/// Headers every answer carries: nothing here is a page to frame, sniff, cache or refer from.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
    ("strict-transport-security", "max-age=31536000"),
    ("cache-control", "no-store"),
];

fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if !h.contains_key(name) {
            h.insert(name, axum::http::HeaderValue::from_static(value));
        }
    }
    resp
}

/// Gives every plain error answer the Problem+JSON shape: those of the body limit and
/// timeout layers, and axum's own (a path parameter of the wrong type, a method the route does
/// not have), keeping their headers (`Allow`, say) and their text as the detail.
async fn shape(resp: Response) -> Response {
    // A handler's own JSON answer (`/readyz`'s reasons) is left as it is.
    let already_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == PROBLEM_JSON || v.starts_with("application/json"));
    let status = resp.status();
    if already_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let (code, detail) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("TOO_LARGE", "the request body is over the limit".to_owned())
        }
        StatusCode::GATEWAY_TIMEOUT => ("TIMEOUT", "the request took too long; retry".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "METHOD_NOT_ALLOWED",
            "the route has no such method".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "UNSUPPORTED_MEDIA_TYPE",
            String::from_utf8_lossy(&text).into_owned(),
        ),
        _ if status.is_client_error() => (
            "INVALID_REQUEST",
            String::from_utf8_lossy(&text).into_owned(),
        ),
        _ => ("UNAVAILABLE", "the gateway could not answer".to_owned()),
    };
    let mut shaped = Problem::new(status, code, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
    pub tenant: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            detail: detail.into(),
            tenant: None,
        }
    }
    pub fn tenant(mut self, t: &str) -> Self {
        self.tenant = Some(t.to_owned());
        self
    }
    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", detail)
    }
    /// A dependency failed; the detail is logged, not shown.
    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> Self {
        tracing::warn!(dependency = what, error = %error, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            format!("{what} is unavailable; retry later"),
        )
    }
    /// Maps an ingest reason code to its HTTP status: size → 413, another tenant → 403, an id
    /// reused for other content → 409, ATP's own failure → 500, everything else → 400.
    pub fn from_rejection(r: &atp_core::Rejection) -> Self {
        let status = match r.reason {
            atp_core::Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            atp_core::Reason::TenantMismatch => StatusCode::FORBIDDEN,
            atp_core::Reason::IdempotencyConflict => StatusCode::CONFLICT,
            atp_core::Reason::Unprocessable => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, r.reason.code(), r.detail.clone())
    }
}

/// The answer when a handler panicked: 500 `INTERNAL` as Problem+JSON; the panic's message is
/// logged at ERROR (it is ATP's defect, and may quote input), never sent to the caller.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = atp_telemetry::panic_message(&*panic);
    tracing::error!(panic = %message, "a request handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "ATP failed on this request; it was logged for its operators",
    )
    .into_response()
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let trace_id = TRACE_ID
            .try_with(Clone::clone)
            .or_else(|_| REQUEST_ID.try_with(Clone::clone))
            .unwrap_or_default();
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": format!("https://atp.dev/problems/{}", self.code.to_lowercase().replace('_', "-")),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
            "traceId": trace_id,
        });
        if let Some(t) = self.tenant {
            body["tenantId"] = json!(t);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        resp
    }
}

pub async fn no_route() -> Problem {
    Problem::not_found("no such route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_problem_json_500_without_the_panic_text() {
        let resp = panicked(Box::new("secret input quoted in a panic"));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["code"], "INTERNAL");
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }
}
