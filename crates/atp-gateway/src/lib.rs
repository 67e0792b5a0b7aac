//! ATP's HTTP gateway (CONTRACT §5): append, query, proofs and verification, health. Stateless between requests: every
//! answer comes from the token, NATS or PostgreSQL.

pub mod admin;
pub mod append;
pub mod auth;
pub mod deadline;
pub mod exports;
pub mod health;
pub mod integrity;
pub mod limits;
pub mod problem;
pub mod query;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use atp_nats::registry::RegistryCache;
use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use ed25519_dalek::SigningKey;
use sqlx::PgPool;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

pub use auth::{AuthConfig, Claims, Principal, Role};
pub use exports::{ExportLimits, ExportsApi};
pub use limits::{Limiter, RateLimits};
pub use problem::Problem;
pub use wait::Waiters;

/// Largest request body: a full batch of 1000 events of 64 KiB would be 64 MiB, which no
/// gateway should buffer; 16 MiB admits 1000 typical (1–10 KiB) events and bounds memory.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// The longest a request may take; `Prefer: wait` is capped below it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// NATS-side dependencies of the gateway.
#[derive(Clone)]
pub struct Bus {
    pub js: Context,
    pub registry: RegistryCache,
    pub producers: async_nats::jetstream::kv::Store,
    /// Published checkpoint signing keys (public halves).
    pub signing_keys: async_nats::jetstream::kv::Store,
    /// Signs the attestation on submissions forwarded to ingress.
    pub attestation_key: Arc<SigningKey>,
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
impl FromRef<GatewayState> for Waiters {
    fn from_ref(s: &GatewayState) -> Self {
        s.waiters.clone()
    }
}

pub fn router(state: GatewayState) -> Router {
    let limits = axum::middleware::from_fn_with_state(state.clone(), limits::enforce);
    let api = Router::new()
        .route("/audit/append", post(append::append_one))
        .route("/audit/append:batch", post(append::append_batch))
        .route("/audit/records", get(query::list_records))
        .route("/audit/records/{record_id}", get(query::get_record))
        .route("/audit/rejections", get(query::list_rejections))
        .route(
            "/audit/records/{record_id}/proof",
            get(integrity::record_proof),
        )
        .route("/producers/keys", get(query::producer_keys))
        .route(
            "/integrity/checkpoints/{tenant_id}/{source_id}",
            get(integrity::checkpoint),
        )
        .route(
            "/integrity/consistency/{tenant_id}/{source_id}",
            get(integrity::consistency),
        )
        .route("/integrity/verify/record", post(integrity::verify_record))
        .route("/integrity/verify/range", post(integrity::verify_range))
        .route("/integrity/keys", get(integrity::keys))
        .route("/integrity/verify/export", post(exports::verify))
        .route("/exports", post(exports::create).get(exports::list))
        .route(
            "/exports/webhook",
            get(exports::get_webhook)
                .put(exports::set_webhook)
                .delete(exports::delete_webhook),
        )
        .route("/exports/{export_id}", get(exports::status))
        .route("/exports/{export_id}/download", get(exports::download))
        .route("/admin/dlq", get(admin::list))
        .route("/admin/dlq/replay", post(admin::replay))
        .route("/admin/dlq/{seq}", get(admin::show))
        .fallback(problem::no_route);
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(problem::no_route)
        // Innermost: after the rate check has authenticated the caller.
        .route_layer(axum::middleware::from_fn(auth::scope_tenant))
        .route_layer(axum::middleware::from_fn(deadline::enforce))
        .route_layer(limits)
        .route_layer(axum::middleware::from_fn(health::observe))
        .with_state(state)
        // Innermost first. The body limit and the timeout answer on their own, so the layer that
        // gives every answer the Problem+JSON shape wraps them.
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(problem::request_context))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
