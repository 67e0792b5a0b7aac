//! Per-tenant rate limits: appends, queries and export requests each have a rate per tenant
//! (GCRA, a burst of twice the rate), with per-tenant overrides. A caller over its rate gets
//! 429 `RATE_LIMITED` with `Retry-After` and `X-RateLimit-Limit|Remaining|Reset`; answers within
//! it carry `X-RateLimit-Limit` and `X-RateLimit-Remaining`.
//!
//! A refusal is held back until the caller's next request could pass (at most
//! [`MAX_REFUSAL_PAUSE`]), so a client retrying in a tight loop is paced at its tenant's rate
//! instead of spending the gateway's CPU, which the other tenants share, on refusals. At most
//! [`MAX_PAUSED_REFUSALS`] are held at once; past that, refusals are answered at once.
//!
//! Memory is bounded: one small state per tenant that called recently (tenants come from
//! verified tokens, so their number is the deployment's), pruned of idle ones every minute.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::GatewayState;
use crate::auth::Principal;
use crate::problem::{Problem, ProblemCode};

/// What a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Append,
    Query,
    Export,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Append, Class::Query, Class::Export];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Append => "append",
            Class::Query => "query",
            Class::Export => "export",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Appends and export requests are the POSTs that create; everything else reads.
    fn of(method: &Method, route: &str) -> Self {
        match (method, route) {
            (&Method::POST, r) if r.starts_with("/api/v1/audit/append") => Class::Append,
            (&Method::POST, "/api/v1/exports") => Class::Export,
            _ => Class::Query,
        }
    }
}

/// Requests per second per tenant, by class, with per-tenant overrides.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub defaults: HashMap<Class, NonZeroU32>,
    pub tenants: HashMap<(String, Class), NonZeroU32>,
}

impl Default for RateLimits {
    /// 1,000 appends, 100 queries and 5 export requests per second per tenant.
    fn default() -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        Self {
            defaults: HashMap::from([
                (Class::Append, n(1000)),
                (Class::Query, n(100)),
                (Class::Export, n(5)),
            ]),
            tenants: HashMap::new(),
        }
    }
}

impl RateLimits {
    /// Applies `class=n` (a default) and `tenant:class=n` (an override) entries.
    pub fn with(mut self, entries: &[String]) -> Result<Self, String> {
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let bad = || {
                format!(
                    "{e:?}: rate limits are class=n or tenant:class=n (class: append, query, export; n > 0)"
                )
            };
            let (key, n) = e.split_once('=').ok_or_else(bad)?;
            let n: NonZeroU32 = n.trim().parse().map_err(|_| bad())?;
            match key.split_once(':') {
                Some((tenant, class)) => {
                    atp_core::TenantId::new(tenant).map_err(|_| bad())?;
                    let class = Class::parse(class).ok_or_else(bad)?;
                    self.tenants.insert((tenant.to_owned(), class), n);
                }
                None => {
                    self.defaults.insert(Class::parse(key).ok_or_else(bad)?, n);
                }
            }
        }
        Ok(self)
    }
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

fn limiter(rate: NonZeroU32) -> Keyed {
    let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        .with_middleware::<StateInformationMiddleware>()
}

/// The limiters: per class, one shared by the tenants on the default rate and one per override.
pub struct Limiter {
    rates: RateLimits,
    shared: HashMap<Class, Keyed>,
    own: HashMap<(String, Class), Keyed>,
    clock: DefaultClock,
    /// Refusals being held back.
    paused: Arc<Semaphore>,
}

/// The longest a refusal is held back.
pub const MAX_REFUSAL_PAUSE: Duration = Duration::from_secs(1);
/// How many refusals may be held back at once.
pub const MAX_PAUSED_REFUSALS: usize = 4096;

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed { limit: u32, remaining: u32 },
    Limited { limit: u32, retry_after: Duration },
}

impl Limiter {
    pub fn new(rates: RateLimits) -> Self {
        let shared = rates
            .defaults
            .iter()
            .map(|(c, r)| (*c, limiter(*r)))
            .collect();
        let own = rates
            .tenants
            .iter()
            .map(|(k, r)| (k.clone(), limiter(*r)))
            .collect();
        Self {
            rates,
            shared,
            own,
            clock: DefaultClock::default(),
            paused: Arc::new(Semaphore::new(MAX_PAUSED_REFUSALS)),
        }
    }

    /// How long to hold back a refusal whose caller may retry in `retry_after`, and the place
    /// it takes among the held ones; `None` when [`MAX_PAUSED_REFUSALS`] are already held.
    pub fn pause(&self, retry_after: Duration) -> Option<(Duration, OwnedSemaphorePermit)> {
        let held = self.paused.clone().try_acquire_owned().ok()?;
        Some((retry_after.min(MAX_REFUSAL_PAUSE), held))
    }

    pub fn check(&self, tenant: &str, class: Class) -> Verdict {
        let key = (tenant.to_owned(), class);
        let (limiter, rate) = match self.own.get(&key) {
            Some(l) => (l, self.rates.tenants.get(&key)),
            None => match self.shared.get(&class) {
                Some(l) => (l, self.rates.defaults.get(&class)),
                None => {
                    return Verdict::Allowed {
                        limit: 0,
                        remaining: 0,
                    };
                }
            },
        };
        let limit = rate.map_or(0, |r| r.get());
        match limiter.check_key(&key.0) {
            Ok(state) => Verdict::Allowed {
                limit,
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                limit,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Forgets tenants whose state has returned to full capacity (bounded memory).
    pub fn prune(&self) {
        for l in self.shared.values().chain(self.own.values()) {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// How often idle tenants are forgotten.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

fn header(resp: &mut Response, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(name, v);
    }
}

/// Middleware on every route: an authenticated caller spends from its tenant's rate for the
/// request's class. Unauthenticated requests pass on, to be refused by their handler. The
/// verified principal is kept in the request, so the handler does not verify the token again.
pub async fn enforce(State(state): State<GatewayState>, req: Request, next: Next) -> Response {
    let class = Class::of(
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map_or("", MatchedPath::as_str),
    );
    let (mut parts, body) = req.into_parts();
    let principal =
        <Principal as axum::extract::FromRequestParts<GatewayState>>::from_request_parts(
            &mut parts, &state,
        )
        .await;
    let Ok(principal) = principal else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let tenant = principal.tenant.to_string();
    match state.limits.check(&tenant, class) {
        Verdict::Allowed { limit, remaining } => {
            parts.extensions.insert(principal);
            let mut resp = next.run(Request::from_parts(parts, body)).await;
            // A handler's own limit (the export cap's 429) says more than the rate.
            if !resp.headers().contains_key("x-ratelimit-limit") {
                header(&mut resp, "x-ratelimit-limit", limit);
                header(&mut resp, "x-ratelimit-remaining", remaining);
            }
            resp
        }
        Verdict::Limited { limit, retry_after } => {
            atp_telemetry::metrics::metrics()
                .rate_limited
                .add(1, &[atp_telemetry::metrics::label("class", class.as_str())]);
            // A held refusal holds nothing (ADR 0012), not even a place among the requests in
            // flight: a flooding tenant's pacing must not shed other tenants' requests.
            if let Some(place) = parts.extensions.get::<crate::capacity::InFlight>() {
                place.release();
            }
            if let Some((pause, _held)) = state.limits.pause(retry_after) {
                tokio::time::sleep(pause).await;
            }
            limited(&tenant, class, limit, retry_after)
        }
    }
}

/// The 429 for a tenant over its `class` rate, with `Retry-After` and the rate headers.
pub(crate) fn limited(tenant: &str, class: Class, limit: u32, retry_after: Duration) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut resp = Problem::new(
        ProblemCode::RateLimited,
        format!(
            "over the tenant's {} rate of {limit}/s; retry in {secs} s",
            class.as_str()
        ),
    )
    .tenant(tenant)
    .into_response();
    header(&mut resp, "retry-after", secs);
    header(&mut resp, "x-ratelimit-limit", limit);
    header(&mut resp, "x-ratelimit-remaining", 0);
    header(&mut resp, "x-ratelimit-reset", secs);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_tenants_get_their_own() {
        let r = RateLimits::default()
            .with(&["query=2".into(), "acme:append=1".into(), "".into()])
            .unwrap();
        assert_eq!(r.defaults[&Class::Query].get(), 2);
        assert_eq!(r.tenants[&("acme".to_owned(), Class::Append)].get(), 1);
        for bad in ["query", "query=0", "read=5", "ACME:query=1", "acme:write=1"] {
            assert!(RateLimits::default().with(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_tenant_spending_its_burst_leaves_the_others_theirs() {
        let l = Limiter::new(
            RateLimits::default()
                .with(&["query=1".into(), "globex:query=1000".into()])
                .unwrap(),
        );
        // A burst of twice the rate, then refused with a wait of about a second.
        assert!(matches!(
            l.check("acme", Class::Query),
            Verdict::Allowed {
                limit: 1,
                remaining: 1
            }
        ));
        assert!(matches!(
            l.check("acme", Class::Query),
            Verdict::Allowed { .. }
        ));
        match l.check("acme", Class::Query) {
            Verdict::Limited { limit, retry_after } => {
                assert_eq!(limit, 1);
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            v => panic!("{v:?}"),
        }
        // Another tenant on the default rate, one with an override, and another class.
        assert!(matches!(
            l.check("initech", Class::Query),
            Verdict::Allowed { .. }
        ));
        assert!(matches!(
            l.check("globex", Class::Query),
            Verdict::Allowed { limit: 1000, .. }
        ));
        assert!(matches!(
            l.check("acme", Class::Append),
            Verdict::Allowed { .. }
        ));
        l.prune();
    }

    #[tokio::test]
    async fn refusals_are_held_until_the_next_could_pass_and_no_more_than_the_cap_at_once() {
        let l = Limiter::new(RateLimits::default());
        let Some((pause, held)) = l.pause(Duration::from_millis(10)) else {
            panic!("the first refusal is held")
        };
        assert_eq!(pause, Duration::from_millis(10));
        drop(held);
        let mut held = Vec::new();
        for _ in 0..MAX_PAUSED_REFUSALS {
            let (pause, h) = l.pause(Duration::from_secs(30)).expect("below the cap");
            assert_eq!(pause, MAX_REFUSAL_PAUSE);
            held.push(h);
        }
        assert!(
            l.pause(Duration::from_millis(10)).is_none(),
            "the cap is reached"
        );
        held.pop();
        assert!(
            l.pause(Duration::from_millis(10)).is_some(),
            "a place is free again"
        );
    }

    #[test]
    fn requests_are_classed_by_method_and_route() {
        assert_eq!(
            Class::of(&Method::POST, "/api/v1/audit/append"),
            Class::Append
        );
        assert_eq!(
            Class::of(&Method::POST, "/api/v1/audit/append:batch"),
            Class::Append
        );
        assert_eq!(Class::of(&Method::POST, "/api/v1/exports"), Class::Export);
        assert_eq!(Class::of(&Method::GET, "/api/v1/exports"), Class::Query);
        assert_eq!(
            Class::of(&Method::GET, "/api/v1/audit/records"),
            Class::Query
        );
    }
}
