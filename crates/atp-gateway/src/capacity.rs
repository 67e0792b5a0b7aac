//! What one gateway takes on at once: connections, requests in flight, request bodies and
//! verification work. Past a cap the gateway sheds load (503 `UNAVAILABLE` with `Retry-After`)
//! or makes new connections wait in the listen backlog, instead of running out of memory or
//! letting one tenant's heavy calls starve the others.
//!
//! The numbers are [`GatewayLimits`], set by `atp serve` (`ATP_GATEWAY_*`); each default
//! carries its derivation. `docs/operations.md` (Sizing) says how to change them together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::{Problem, ProblemCode};

/// The gateway's caps. Operators change them with the request mix and the host's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayLimits {
    /// Connections served at once; further ones wait in the kernel's listen backlog until one
    /// closes. 1,000: Linux's default soft limit on open files is 1,024, and the gateway needs
    /// some 40 descriptors besides (two database pools of 16, NATS, logs); raise the file limit
    /// with it. An idle HTTP/1 connection costs a task and hyper's buffers, ~10 KiB.
    pub max_connections: usize,
    /// Requests in flight at once before the gateway answers 503 `UNAVAILABLE` with
    /// `Retry-After`. 256: each may hold a request body of up to [`Self::max_body`], so 256 ×
    /// 16 MiB = 4 GiB is the worst case of buffered bodies, what a gateway host with 8 GiB can
    /// spare; and behind 16 database connections answering in ~5 ms, 256 waiting requests are
    /// ~80 ms of queue — more is a backlog no client should wait in. Held rate-limit refusals
    /// (ADR 0012) and `/healthz`, `/metrics` do not count.
    pub max_in_flight: usize,
    /// How long a client has to send a request's head, from the moment the gateway starts
    /// waiting for it: on a fresh connection, and between requests on a kept-alive one (so it is
    /// the idle timeout too; hyper starts the same clock for both). 10 s: a request head (a few
    /// KiB) crosses a slow link in well under a second; 10 s leaves room for three lost packets
    /// (TCP's initial retransmission timeout is 1 s, doubling: 1 + 2 + 4 = 7 s). A slow-loris
    /// client trickling a head is cut off at the same deadline, however it paces its bytes.
    pub header_read_timeout: Duration,
    /// Largest request body, enforced while the body is read (a `Content-Length` over it is
    /// refused before reading anything): 413 `TOO_LARGE`. See [`crate::MAX_BODY`].
    pub max_body: usize,
    /// Range and bundle verifications running at once, gateway-wide: each hashes on a blocking
    /// thread and holds one chunk of records (or one bundle member) in memory. 2: the cores of
    /// the smallest host we size for; more would only queue on the CPU.
    pub verify_concurrency: usize,
    /// Of those, how many one tenant may run at once: 1, so one tenant's verifications never
    /// take every slot while another tenant waits.
    pub verify_per_tenant: usize,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_in_flight: 256,
            header_read_timeout: Duration::from_secs(10),
            max_body: crate::MAX_BODY,
            verify_concurrency: 2,
            verify_per_tenant: 1,
        }
    }
}

/// What `Retry-After` says when the gateway sheds a request: a second is long enough for the
/// in-flight requests ahead of it (most take milliseconds) to finish, and short enough that a
/// client honouring it loses little.
pub const SHED_RETRY_AFTER_SECS: u64 = 1;

/// The shared caps of one gateway: requests in flight and the verification pool.
#[derive(Clone)]
pub struct Capacity(Arc<CapacityParts>);

pub struct CapacityParts {
    pub limits: GatewayLimits,
    in_flight: Arc<Semaphore>,
    pub verify: VerifyPool,
}

impl Capacity {
    pub fn new(limits: GatewayLimits) -> Self {
        Self(Arc::new(CapacityParts {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            verify: VerifyPool::new(limits.verify_concurrency, limits.verify_per_tenant),
            limits,
        }))
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self::new(GatewayLimits::default())
    }
}

impl std::ops::Deref for Capacity {
    type Target = CapacityParts;
    fn deref(&self) -> &CapacityParts {
        &self.0
    }
}

/// A request's place among those in flight, kept in its extensions so that work which holds
/// nothing (a rate-limit refusal being held back) can give it up early.
#[derive(Clone)]
pub struct InFlight(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl InFlight {
    /// Gives the place up before the request ends.
    pub fn release(&self) {
        if let Ok(mut slot) = self.0.lock() {
            slot.take();
        }
    }
}

/// The 503 a shed request gets.
pub fn unavailable(detail: &str) -> Response {
    let mut resp = Problem::new(ProblemCode::Unavailable, detail).into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(SHED_RETRY_AFTER_SECS),
    );
    resp
}

/// Liveness and metrics are answered whatever the load: shedding them would have an
/// orchestrator restart a gateway for being busy, and blind its operators when they most need
/// to see. `/readyz` is shed like the rest, so a load balancer sends traffic elsewhere.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/metrics")
}

/// Middleware outside authentication: a request past [`GatewayLimits::max_in_flight`] is
/// answered 503 at once, before anything is read or verified.
pub async fn shed(State(cap): State<Capacity>, mut req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let Ok(permit) = cap.in_flight.clone().try_acquire_owned() else {
        atp_telemetry::metrics::metrics().shed.add(1, &[]);
        return unavailable("the gateway is at its limit of requests in flight; retry shortly");
    };
    let place = InFlight(Arc::new(Mutex::new(Some(permit))));
    req.extensions_mut().insert(place.clone());
    let resp = next.run(req).await;
    place.release();
    resp
}

/// Why a verification could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("the tenant already runs its limit of verifications")]
    Tenant,
    #[error("every verification slot of this gateway is taken")]
    Gateway,
}

impl Busy {
    /// 429 `RATE_LIMITED` for a tenant at its own limit (it is the one to wait), 503
    /// `UNAVAILABLE` for a full gateway; both with `Retry-After`.
    pub fn problem(self, tenant: &str) -> Response {
        let mut resp = match self {
            Busy::Tenant => Problem::new(
                ProblemCode::RateLimited,
                "the tenant's verifications already run at its limit; retry when one ends",
            )
            .tenant(tenant)
            .into_response(),
            Busy::Gateway => {
                return unavailable("every verification slot is taken; retry shortly");
            }
        };
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(SHED_RETRY_AFTER_SECS),
        );
        resp
    }
}

/// The slots of the verification pool: gateway-wide and per tenant.
#[derive(Clone)]
pub struct VerifyPool {
    slots: Arc<Semaphore>,
    per_tenant: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// A verification's slot; given back when dropped.
pub struct VerifySlot {
    _slot: OwnedSemaphorePermit,
    tenant: String,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for VerifySlot {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock()
            && let Some(n) = running.get_mut(&self.tenant)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

impl VerifyPool {
    pub fn new(slots: usize, per_tenant: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            per_tenant: per_tenant.max(1),
            running: Arc::default(),
        }
    }

    /// A slot for one of `tenant`'s verifications, or why not. Never waits: a caller told to
    /// retry holds nothing meanwhile.
    pub fn try_enter(&self, tenant: &str) -> Result<VerifySlot, Busy> {
        let mut running = self.running.lock().map_err(|_| Busy::Gateway)?;
        let mine = running.get(tenant).copied().unwrap_or(0);
        if mine >= self.per_tenant {
            return Err(Busy::Tenant);
        }
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy::Gateway)?;
        running.insert(tenant.to_owned(), mine + 1);
        Ok(VerifySlot {
            _slot: slot,
            tenant: tenant.to_owned(),
            running: self.running.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_share_of_the_verification_pool_and_no_more() {
        let pool = VerifyPool::new(2, 1);
        let acme = pool.try_enter("acme").expect("a free slot");
        assert_eq!(pool.try_enter("acme").err(), Some(Busy::Tenant));
        let globex = pool.try_enter("globex").expect("another tenant's turn");
        assert_eq!(
            pool.try_enter("initech").err(),
            Some(Busy::Gateway),
            "every slot taken"
        );
        drop(acme);
        let again = pool.try_enter("acme").expect("acme's slot came back");
        drop((again, globex));
        assert!(pool.running.lock().unwrap().is_empty(), "nothing leaks");
    }

    #[test]
    fn liveness_and_metrics_are_never_shed() {
        assert!(exempt("/healthz") && exempt("/metrics"));
        assert!(!exempt("/readyz") && !exempt("/api/v1/audit/records"));
    }

    #[tokio::test]
    async fn a_released_place_is_free_for_the_next_request() {
        let cap = Capacity::new(GatewayLimits {
            max_in_flight: 1,
            ..Default::default()
        });
        let permit = cap.in_flight.clone().try_acquire_owned().unwrap();
        assert!(cap.in_flight.clone().try_acquire_owned().is_err());
        let place = InFlight(Arc::new(Mutex::new(Some(permit))));
        place.release();
        assert!(cap.in_flight.clone().try_acquire_owned().is_ok());
    }
}
