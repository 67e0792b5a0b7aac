//! ATP's HTTP gateway (CONTRACT §5, §8): append, query, proofs and verification, the tenant's
//! privacy policy, health. Stateless between requests: every answer comes from the token, NATS
//! or PostgreSQL.

pub mod admin;
pub mod append;
pub mod auth;
pub mod capacity;
pub mod deadline;
pub mod exports;
pub mod health;
pub mod input;
pub mod integrity;
pub mod limits;
pub mod openapi;
pub mod policy;
pub mod privacy;
pub mod problem;
pub mod query;
pub mod redact;
pub mod server;
mod wait;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use atp_nats::registry::RegistryCache;
use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use ed25519_dalek::SigningKey;
use sqlx::PgPool;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{AuthConfig, Claims, Permission, Principal};
pub use capacity::{Capacity, GatewayLimits};
pub use exports::{ExportLimits, ExportsApi, ExportsParts};
pub use limits::{Limiter, RateLimits};
pub use problem::Problem;
pub use wait::Waiters;

/// Largest request body by default ([`GatewayLimits::max_body`]): a full batch of 1000 events
/// of 64 KiB would be 64 MiB, which no gateway should buffer; 16 MiB admits 1000 typical
/// (1–10 KiB) events and bounds memory.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// The longest a request may take; `Prefer: wait` is capped below it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// NATS-side dependencies of the gateway, shared: axum clones the state for every request and
/// every layer, and a deep copy of the NATS handles (with their cached stream infos) made
/// the state's clones most of what a refused request cost.
#[derive(Clone)]
pub struct Bus(Arc<BusParts>);

impl Bus {
    pub fn new(parts: BusParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for Bus {
    type Target = BusParts;
    fn deref(&self) -> &BusParts {
        &self.0
    }
}

pub struct BusParts {
    pub js: Context,
    pub registry: RegistryCache,
    pub producers: async_nats::jetstream::kv::Store,
    /// Published checkpoint signing keys (public halves).
    pub signing_keys: async_nats::jetstream::kv::Store,
    /// Signs the attestation on submissions forwarded to ingress.
    pub attestation_key: Arc<SigningKey>,
    /// The query answers' freshness headers, reused for a moment.
    pub freshness: query::FreshnessCache,
    /// Tenants' privacy policies (who reads what in clear).
    pub policies: atp_nats::policy::PolicyCache,
}

#[derive(Clone)]
pub struct GatewayState {
    pub auth: Arc<AuthConfig>,
    pub bus: Bus,
    /// The read models as the caller's tenant sees them: a role under row-level security
    /// ([`atp_store::connect_gateway`]).
    pub db: PgPool,
    /// All tenants' rows, for the operator's routes only (`/admin`: replaying dead letters).
    pub ops_db: PgPool,
    pub waiters: Waiters,
    pub exports: exports::ExportsApi,
    /// Per-tenant rates for appends, queries and export requests.
    pub limits: Arc<Limiter>,
    /// Requests in flight, body size and the verification pool.
    pub capacity: Capacity,
}

impl FromRef<GatewayState> for Arc<AuthConfig> {
    fn from_ref(s: &GatewayState) -> Self {
        s.auth.clone()
    }
}
impl FromRef<GatewayState> for Bus {
    fn from_ref(s: &GatewayState) -> Self {
        s.bus.clone()
    }
}
impl FromRef<GatewayState> for PgPool {
    fn from_ref(s: &GatewayState) -> Self {
        s.db.clone()
    }
}
impl FromRef<GatewayState> for Capacity {
    fn from_ref(s: &GatewayState) -> Self {
        s.capacity.clone()
    }
}
impl FromRef<GatewayState> for Waiters {
    fn from_ref(s: &GatewayState) -> Self {
        s.waiters.clone()
    }
}

/// The API's routes, each registered with its OpenAPI operation (paths relative to `/api/v1`).
fn api_routes() -> OpenApiRouter<GatewayState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(append::append_one))
        .routes(routes!(append::append_batch))
        .routes(routes!(webhook::ingest))
        .routes(routes!(query::list_records))
        .routes(routes!(query::get_record))
        .routes(routes!(query::list_rejections))
        .routes(routes!(integrity::record_proof))
        .routes(routes!(query::producer_keys))
        .routes(routes!(integrity::checkpoint))
        .routes(routes!(integrity::consistency))
        .routes(routes!(integrity::verify_record))
        .routes(routes!(integrity::verify_range))
        .routes(routes!(integrity::keys))
        .routes(routes!(exports::verify))
        .routes(routes!(exports::create, exports::list))
        .routes(routes!(
            exports::get_webhook,
            exports::set_webhook,
            exports::delete_webhook
        ))
        .routes(routes!(exports::status))
        .routes(routes!(exports::download))
        .routes(routes!(admin::list))
        .routes(routes!(admin::replay))
        .routes(routes!(admin::show))
        .routes(routes!(policy::get_policy, policy::put_policy))
        .routes(routes!(policy::evaluate_event))
        .routes(routes!(policy::policy_schema))
        .routes(routes!(openapi::audit_data_schema))
        .routes(routes!(privacy::request_access))
        .routes(routes!(privacy::request_erasure))
        .routes(routes!(privacy::request_status))
        .routes(routes!(privacy::create_hold, privacy::list_holds))
        .routes(routes!(privacy::release_hold))
}

/// The OpenAPI document of the API, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().split_for_parts().1;
    openapi::conventions(&mut doc);
    doc
}

pub fn router(state: GatewayState) -> Router {
    let limits = axum::middleware::from_fn_with_state(state.clone(), limits::enforce);
    let capacity = state.capacity.clone();
    let max_body = capacity.limits.max_body;
    let (api, mut doc) = api_routes().split_for_parts();
    openapi::conventions(&mut doc);
    let doc = Arc::new(doc);
    let api = api
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(problem::no_route);
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(problem::no_route)
        // Innermost: after the rate check has authenticated the caller. Nothing reads a body
        // before that: an unauthenticated or rate-limited request is answered with its body
        // unread, so a stranger cannot make the gateway buffer anything.
        .route_layer(axum::middleware::from_fn(auth::scope_tenant))
        .route_layer(axum::middleware::from_fn(input::refuse_nul))
        .route_layer(axum::middleware::from_fn(deadline::enforce))
        .route_layer(limits)
        .route_layer(axum::middleware::from_fn(health::observe))
        .with_state(state)
        // Innermost first. The body limit and the timeout answer on their own, so the layer that
        // gives every answer the Problem+JSON shape wraps them. A handler that panics answers
        // 500 `INTERNAL` (logged at ERROR) instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            problem::panicked,
        ))
        // The body limit holds while the body is read: a declared length over it is refused
        // before reading, a chunked body once it passes it. axum's extractors get the same
        // limit (their own default, 2 MiB, would otherwise apply first).
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Load shedding before anything else is spent on the request.
        .layer(axum::middleware::from_fn_with_state(
            capacity,
            capacity::shed,
        ))
        .layer(axum::middleware::from_fn(problem::request_context))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
