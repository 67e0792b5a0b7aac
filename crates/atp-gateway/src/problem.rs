//! Problem+JSON (RFC 9457) answers, from one code table.

use atp_store::StoreError;
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
    let https = forwarded_https(req.headers());
    REQUEST_ID
        .scope(id, async move {
            secure(shape(next.run(req).await).await, https)
        })
        .await
}

/// Whether the TLS-terminating proxy in front says the request came over HTTPS
/// (`X-Forwarded-Proto: https`, its first value when proxies chained). The gateway itself
/// speaks plain HTTP.
fn forwarded_https(h: &axum::http::HeaderMap) -> bool {
    h.get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// Sent only on answers to requests that came over HTTPS: over plain HTTP the header means
/// nothing (RFC 6797 §8.1, a browser ignores it) and only claims a transport that is not there.
const HSTS: (&str, &str) = ("strict-transport-security", "max-age=31536000");

/// Headers every answer carries: nothing here is a page to frame, sniff, cache or refer from.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

fn secure(mut resp: Response, https: bool) -> Response {
    let h = resp.headers_mut();
    let hsts = https.then_some(HSTS);
    for (name, value) in SECURITY_HEADERS.into_iter().chain(hsts) {
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
    let lossy = || String::from_utf8_lossy(&text).into_owned();
    let (code, detail) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            ProblemCode::TooLarge,
            "the request body is over the limit".to_owned(),
        ),
        StatusCode::GATEWAY_TIMEOUT => (
            ProblemCode::Timeout,
            "the request took too long; retry".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            ProblemCode::MethodNotAllowed,
            "the route has no such method".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (ProblemCode::UnsupportedMediaType, lossy()),
        _ if status.is_client_error() => (ProblemCode::InvalidRequest, lossy()),
        _ => (
            ProblemCode::Unavailable,
            "the gateway could not answer".to_owned(),
        ),
    };
    // axum's status stands: a refusal it answers 400 or 422 is `INVALID_REQUEST` either way.
    let mut shaped = Problem {
        status,
        ..Problem::new(code, detail)
    }
    .into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Declares [`ProblemCode`] from one table: each row is a variant, its HTTP status, the `code`
/// it has on the wire and the `title` its answers carry. `docs/contract.md` lists the same
/// table; a test below keeps the two equal.
macro_rules! problem_codes {
    ($($(#[$doc:meta])* $variant:ident = ($status:ident, $code:literal, $title:literal),)+) => {
        /// Every `code` a Problem+JSON answer can carry, with the status and title it always
        /// comes with. No other code reaches the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemCode {
            $($(#[$doc])* $variant,)+
        }

        impl ProblemCode {
            pub const ALL: &[ProblemCode] = &[$(Self::$variant,)+];

            /// The HTTP status of every answer with this code.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)+
                }
            }

            /// The code as the wire spells it.
            pub fn code(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            /// The problem type's short summary (RFC 9457 §3.1.3): the same for every answer
            /// with this code; what differs goes in `detail`.
            pub fn title(self) -> &'static str {
                match self {
                    $(Self::$variant => $title,)+
                }
            }
        }
    };
}

problem_codes! {
    // The request itself.
    /// A body, path or parameter this route does not take; axum's own refusals of the request's
    /// shape are answered with this code and axum's status.
    InvalidRequest = (BAD_REQUEST, "INVALID_REQUEST", "The request is not one this route takes"),
    InvalidQuery = (BAD_REQUEST, "INVALID_QUERY", "A query parameter or path segment is not valid"),
    InvalidCursor = (BAD_REQUEST, "INVALID_CURSOR", "The cursor is not one this API issued"),
    InvalidWebhook = (BAD_REQUEST, "INVALID_WEBHOOK", "The webhook URL is not an https URL of a public host"),
    IdempotencyKeyMismatch = (BAD_REQUEST, "IDEMPOTENCY_KEY_MISMATCH", "X-Idempotency-Key names another event"),
    UnsupportedMediaType = (UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "The content type is not accepted here"),
    MethodNotAllowed = (METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "The route has no such method"),
    NotFound = (NOT_FOUND, "NOT_FOUND", "No such resource"),
    RangeNotSatisfiable = (RANGE_NOT_SATISFIABLE, "RANGE_NOT_SATISFIABLE", "The range is outside the bundle"),
    /// A policy document that does not parse or validate: the answer's `errors` names every
    /// error at its JSON Pointer into the document.
    PolicyInvalid = (BAD_REQUEST, "POLICY_INVALID", "The policy document is not valid"),
    // The caller.
    Unauthenticated = (UNAUTHORIZED, "UNAUTHENTICATED", "No valid bearer token"),
    /// `POST /ingest/webhooks/{sourceId}` without a Standard Webhooks signature that verifies
    /// (or outside its 5-minute window).
    WebhookUnauthenticated = (UNAUTHORIZED, "WEBHOOK_UNAUTHENTICATED", "No valid webhook signature"),
    Forbidden = (FORBIDDEN, "FORBIDDEN", "The token's roles do not allow this"),
    EditionRequired = (FORBIDDEN, "EDITION_REQUIRED", "The token's edition does not include this feature"),
    CrossTenant = (FORBIDDEN, "CROSS_TENANT", "Another tenant's data"),
    RateLimited = (TOO_MANY_REQUESTS, "RATE_LIMITED", "Over the tenant's rate; retry after Retry-After"),
    ExportLimit = (TOO_MANY_REQUESTS, "EXPORT_LIMIT", "The tenant has its limit of exports queued or running"),
    // What was asked for is not there yet, or no longer.
    ProofPending = (CONFLICT, "PROOF_PENDING", "No checkpoint covers the record yet"),
    ExportNotReady = (CONFLICT, "EXPORT_NOT_READY", "The export has not completed"),
    ExportExpired = (GONE, "EXPORT_EXPIRED", "The export's bundle is no longer stored"),
    /// Another change of the tenant's policy was stored while this one was.
    PolicyConflict = (CONFLICT, "POLICY_CONFLICT", "The policy changed meanwhile; read it again"),
    /// A legal hold covers what was to be erased.
    LegalHold = (CONFLICT, "LEGAL_HOLD", "A legal hold covers this data"),
    // A submission refused (the rejection reasons of CONTRACT §2, `atp_core::Reason`).
    Malformed = (BAD_REQUEST, "MALFORMED", "The submission is not an I-JSON object"),
    SchemaValidationFailed = (BAD_REQUEST, "SCHEMA_VALIDATION_FAILED", "The event does not follow the audit event schema"),
    SignatureMissing = (BAD_REQUEST, "SIGNATURE_MISSING", "The event carries no producer signature"),
    SignatureInvalid = (BAD_REQUEST, "SIGNATURE_INVALID", "The producer signature does not verify"),
    UnknownKey = (BAD_REQUEST, "UNKNOWN_KEY", "The signing key is not registered for the source"),
    KeyRevoked = (BAD_REQUEST, "KEY_REVOKED", "The signing key is revoked"),
    TenantMismatch = (FORBIDDEN, "TENANT_MISMATCH", "Another tenant than the token's"),
    TooLarge = (PAYLOAD_TOO_LARGE, "TOO_LARGE", "Over the size limit"),
    SequenceRegression = (BAD_REQUEST, "SEQUENCE_REGRESSION", "The event's sequence goes back"),
    PolicyDenied = (BAD_REQUEST, "POLICY_DENIED", "The tenant's policy refuses the event"),
    UnknownSource = (BAD_REQUEST, "UNKNOWN_SOURCE", "No such source is registered for the tenant"),
    SourceMismatch = (BAD_REQUEST, "SOURCE_MISMATCH", "The event's source is not the one registered"),
    IdempotencyConflict = (CONFLICT, "IDEMPOTENCY_CONFLICT", "The event id was recorded with other content"),
    /// ATP failed on this submission (a defect, logged): it is kept as a rejection.
    Unprocessable = (INTERNAL_SERVER_ERROR, "UNPROCESSABLE", "ATP failed on this submission"),
    /// A producer's relay could not map a message onto an event and forwarded it as received.
    Unmappable = (BAD_REQUEST, "UNMAPPABLE", "The producer's relay could not map the message"),
    // ATP's side: retrying helps only where the status is 503 or 504.
    /// A handler panicked (a defect, logged at ERROR).
    Internal = (INTERNAL_SERVER_ERROR, "INTERNAL", "ATP failed on this request"),
    /// A stored record does not match its digest, or a proof does not reach the signed root:
    /// what was asked for is withheld.
    IntegrityError = (INTERNAL_SERVER_ERROR, "INTEGRITY_ERROR", "Stored data failed an integrity check"),
    /// Stored data contradicts itself (`StoreError::Corrupt`: a hash of the wrong length, a
    /// missing tile, a row that does not decode). A retry gets the same answer.
    DataCorrupt = (INTERNAL_SERVER_ERROR, "DATA_CORRUPT", "Stored data contradicts itself"),
    /// A dependency (NATS, PostgreSQL, the cold store) failed, or the gateway is at its limit.
    Unavailable = (SERVICE_UNAVAILABLE, "UNAVAILABLE", "ATP cannot answer now; retry later"),
    Timeout = (GATEWAY_TIMEOUT, "TIMEOUT", "The request took longer than its route's budget"),
}

impl serde::Serialize for ProblemCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// The OpenAPI document lists every code, so a client can match on them exhaustively.
impl utoipa::PartialSchema for ProblemCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Each code comes with one status and one title (docs/contract.md, \"Problem codes\").",
            ))
            .enum_values(Some(Self::ALL.iter().map(|c| c.code())))
            .into()
    }
}

impl utoipa::ToSchema for ProblemCode {}

impl From<atp_core::Reason> for ProblemCode {
    /// A rejection reason answers under its own code (CONTRACT §2).
    fn from(r: atp_core::Reason) -> Self {
        use atp_core::Reason as R;
        match r {
            R::Malformed => Self::Malformed,
            R::SchemaValidationFailed => Self::SchemaValidationFailed,
            R::SignatureMissing => Self::SignatureMissing,
            R::SignatureInvalid => Self::SignatureInvalid,
            R::UnknownKey => Self::UnknownKey,
            R::KeyRevoked => Self::KeyRevoked,
            R::TenantMismatch => Self::TenantMismatch,
            R::TooLarge => Self::TooLarge,
            R::SequenceRegression => Self::SequenceRegression,
            R::PolicyDenied => Self::PolicyDenied,
            R::UnknownSource => Self::UnknownSource,
            R::SourceMismatch => Self::SourceMismatch,
            R::IdempotencyConflict => Self::IdempotencyConflict,
            R::Unprocessable => Self::Unprocessable,
            R::Unmappable => Self::Unmappable,
        }
    }
}

/// One thing wrong with a request body, at a JSON Pointer into it: the items of a problem's
/// `errors` member (an RFC 9457 extension member).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct InvalidAt {
    /// JSON Pointer into the request body (`""`: the body as a whole).
    pub path: String,
    pub message: String,
}

/// A refusal or failure, answered as Problem+JSON. Its status is its code's.
#[derive(Debug, Clone)]
pub struct Problem {
    pub code: ProblemCode,
    /// The code's status, except for axum's own refusals, which [`shape`] keeps as axum sent.
    status: StatusCode,
    pub detail: String,
    pub tenant: Option<String>,
    /// Every error in the body, where the code names them (`POLICY_INVALID`); empty otherwise
    /// and then left out.
    pub errors: Vec<InvalidAt>,
}

impl Problem {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            status: code.status(),
            detail: detail.into(),
            tenant: None,
            errors: Vec::new(),
        }
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn tenant(mut self, t: &str) -> Self {
        self.tenant = Some(t.to_owned());
        self
    }
    pub fn errors(mut self, errors: Vec<InvalidAt>) -> Self {
        self.errors = errors;
        self
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::Unauthenticated, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::Forbidden, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::NotFound, detail)
    }
    /// A dependency failed; the detail is logged, not shown.
    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> Self {
        tracing::warn!(dependency = what, error = %error, "dependency unavailable");
        Self::new(
            ProblemCode::Unavailable,
            format!("{what} is unavailable; retry later"),
        )
    }
    /// A read of `what` from PostgreSQL failed: a cursor this API did not issue is the caller's
    /// (400), stored data that contradicts itself is ATP's and will not mend on a retry (500,
    /// logged at ERROR for someone to look at), anything else is an outage (503).
    pub fn store(what: &str, error: StoreError) -> Self {
        match error {
            StoreError::BadCursor => Self::new(
                ProblemCode::InvalidCursor,
                "the cursor is not one this API issued",
            ),
            StoreError::Corrupt(reason) => {
                tracing::error!(store = what, reason = %reason, "stored data contradicts itself");
                Self::new(
                    ProblemCode::DataCorrupt,
                    format!(
                        "{what} holds data that contradicts itself; it was logged for ATP's operators"
                    ),
                )
            }
            other => Self::unavailable(what, other),
        }
    }
    /// A refused submission answers under its reason's code and status: size → 413, another
    /// tenant → 403, an id reused for other content → 409, ATP's own failure → 500, everything
    /// else → 400.
    pub fn from_rejection(r: &atp_core::Rejection) -> Self {
        Self::new(r.reason.into(), r.detail.clone())
    }
}

impl From<StoreError> for Problem {
    /// A failed read of the read model (see [`Problem::store`]).
    fn from(e: StoreError) -> Self {
        Self::store("the read model", e)
    }
}

/// The answer when a handler panicked: 500 `INTERNAL` as Problem+JSON; the panic's message is
/// logged at ERROR (it is ATP's defect, and may quote input), never sent to the caller.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = atp_telemetry::panic_message(&*panic);
    tracing::error!(panic = %message, "a request handler panicked");
    Problem::new(
        ProblemCode::Internal,
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
        let code = self.code.code();
        let mut body = json!({
            "type": format!("https://atp.dev/problems/{}", code.to_lowercase().replace('_', "-")),
            "title": self.code.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": code,
            "traceId": trace_id,
        });
        if let Some(t) = self.tenant {
            body["tenantId"] = json!(t);
        }
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
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
    use std::collections::BTreeMap;

    /// The rows of `docs/contract.md`'s "Problem codes" table: code → (status, title).
    fn documented() -> BTreeMap<String, (u16, String)> {
        let doc = include_str!("../../../docs/contract.md");
        let section = doc
            .split_once("### Problem codes")
            .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
            .expect("docs/contract.md has a \"### Problem codes\" section");
        let mut rows = BTreeMap::new();
        for line in section.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // `| code | status | title | when |` splits into six cells, the outer two empty.
            let [_, code, status, title, _, _] = cells[..] else {
                continue;
            };
            let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                continue;
            };
            let status = status
                .parse()
                .unwrap_or_else(|_| panic!("{code}: status {status:?} is not a number"));
            let before = rows.insert(code.to_owned(), (status, title.to_owned()));
            assert!(before.is_none(), "{code} is documented twice");
        }
        rows
    }

    #[test]
    fn the_codes_are_the_ones_the_contract_documents_with_their_status_and_title() {
        let documented = documented();
        let mut wrong = Vec::new();
        for code in ProblemCode::ALL {
            let ours = (code.status().as_u16(), code.title().to_owned());
            match documented.get(code.code()) {
                None => wrong.push(format!("{} is not in docs/contract.md", code.code())),
                Some(doc) if *doc != ours => wrong.push(format!(
                    "{}: docs/contract.md says {doc:?}, the code {ours:?}",
                    code.code()
                )),
                Some(_) => {}
            }
        }
        for code in documented.keys() {
            if !ProblemCode::ALL.iter().any(|c| c.code() == code) {
                wrong.push(format!("{code} is documented but no ProblemCode"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn codes_are_distinct_upper_snake_case_and_serialize_as_themselves() {
        let mut seen = std::collections::HashSet::new();
        for code in ProblemCode::ALL {
            let c = code.code();
            assert!(seen.insert(c), "{c} twice");
            assert!(
                c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{c}"
            );
            assert_eq!(serde_json::to_value(code).unwrap(), c);
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    /// A rejection answers under the reason's own code, with the status the contract gives it.
    #[test]
    fn every_rejection_reason_answers_its_own_code() {
        for reason in atp_core::Reason::ALL {
            let p = Problem::from_rejection(&atp_core::Rejection::new(reason, "why"));
            assert_eq!(p.code.code(), reason.code());
            let expected = match reason {
                atp_core::Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                atp_core::Reason::TenantMismatch => StatusCode::FORBIDDEN,
                atp_core::Reason::IdempotencyConflict => StatusCode::CONFLICT,
                atp_core::Reason::Unprocessable => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            assert_eq!(p.status(), expected, "{reason:?}");
        }
    }

    async fn answer(p: impl IntoResponse) -> (StatusCode, serde_json::Value) {
        let resp = p.into_response();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn an_answer_carries_its_codes_status_title_and_type() {
        let (status, p) =
            answer(Problem::new(ProblemCode::ProofPending, "soon").tenant("acme")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            p,
            json!({
                "type": "https://atp.dev/problems/proof-pending",
                "title": "No checkpoint covers the record yet",
                "status": 409,
                "detail": "soon",
                "code": "PROOF_PENDING",
                "traceId": "",
                "tenantId": "acme",
            })
        );
    }

    /// `errors` is there when a code names the body's errors, and only then.
    #[tokio::test]
    async fn an_answer_lists_the_bodys_errors_where_it_has_them() {
        let at = |path: &str| InvalidAt {
            path: path.to_owned(),
            message: "wrong".to_owned(),
        };
        let (status, p) = answer(
            Problem::new(ProblemCode::PolicyInvalid, "2 errors")
                .errors(vec![at("/subject"), at("/fields/0/path")]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            p["errors"],
            json!([
                {"path": "/subject", "message": "wrong"},
                {"path": "/fields/0/path", "message": "wrong"}
            ])
        );
        let (_, p) = answer(Problem::new(ProblemCode::PolicyConflict, "raced")).await;
        assert!(p.get("errors").is_none(), "{p}");
    }

    /// Stored data that contradicts itself is ATP's fault and does not mend: 500, not the 503
    /// that would have a client retry forever. A bad cursor is the caller's; the rest are
    /// outages.
    #[tokio::test]
    async fn store_errors_answer_by_whose_fault_and_whether_a_retry_helps() {
        let cases = [
            (
                StoreError::Corrupt("stored hash is not 32 bytes".into()),
                500,
                "DATA_CORRUPT",
            ),
            (StoreError::BadCursor, 400, "INVALID_CURSOR"),
            (
                StoreError::Unavailable(sqlx::Error::PoolTimedOut),
                503,
                "UNAVAILABLE",
            ),
        ];
        for (error, status, code) in cases {
            let (s, p) = answer(Problem::from(error)).await;
            assert_eq!((s.as_u16(), p["code"].as_str()), (status, Some(code)));
            assert!(
                !p["detail"].as_str().unwrap().contains("32 bytes"),
                "the store's reason is logged, not shown: {p}"
            );
        }
    }

    #[test]
    fn hsts_only_on_answers_to_requests_a_proxy_says_came_over_https() {
        let headers = |proto: Option<&'static str>| {
            let mut h = axum::http::HeaderMap::new();
            if let Some(p) = proto {
                h.insert("x-forwarded-proto", axum::http::HeaderValue::from_static(p));
            }
            h
        };
        for (proto, https) in [
            (None, false),
            (Some("http"), false),
            (Some("https"), true),
            (Some("HTTPS"), true),
            (Some("https, http"), true),
            (Some("http, https"), false),
        ] {
            assert_eq!(forwarded_https(&headers(proto)), https, "{proto:?}");
            let resp = secure(Response::new(axum::body::Body::empty()), https);
            assert_eq!(
                resp.headers().contains_key("strict-transport-security"),
                https,
                "{proto:?}"
            );
            assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        }
    }

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
