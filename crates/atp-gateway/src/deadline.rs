//! How long each route may take before the gateway gives up and answers 504 `TIMEOUT`.
//!
//! A budget covers the handler up to its response head; a download's body streams after it.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::{Problem, ProblemCode};

/// The budget of a read (a query, a proof, a single verification): an index lookup or a page
/// takes milliseconds, and 10 s is what an interactive caller waits before giving up anyway.
pub const READ: Duration = Duration::from_secs(10);

/// The longest one statement of the gateway's database pool may run (PostgreSQL's
/// `statement_timeout`). A route that times out drops its query, but PostgreSQL would go on
/// running it for the statement timeout: a statement longer than the route's budget would
/// spend the database's time on an answer nobody waits for, and a caller retrying after its
/// 504 would pile such statements up. So no statement outlives a read's budget; the routes with
/// longer budgets (`verify/range`, appends waiting for their record) run many short statements,
/// never one long one. `/readyz` (5 s) runs only a catalog lookup.
pub const STATEMENT_TIMEOUT: Duration = READ;

/// A route's budget: an append may wait up to [`crate::append::MAX_WAIT`] for its record;
/// reads are index lookups; verifying a range or a bundle re-hashes up to their caps.
pub fn budget(method: &Method, route: &str) -> Duration {
    let s = Duration::from_secs;
    match (method, route) {
        (&Method::POST, r) if r.starts_with("/api/v1/audit/append") => {
            crate::append::MAX_WAIT + s(5)
        }
        (&Method::POST, "/api/v1/integrity/verify/range") => s(30),
        (&Method::POST, "/api/v1/integrity/verify/export") => s(60),
        (&Method::GET, "/api/v1/exports/{export_id}/download") => s(30),
        (_, r) if r.starts_with("/api/v1/admin/") => s(60),
        (_, "/healthz" | "/readyz" | "/metrics") => s(5),
        _ => READ,
    }
}

/// Runs the request within its route's budget.
pub async fn enforce(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let budget = budget(req.method(), route);
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Problem::new(
            ProblemCode::Timeout,
            format!(
                "the request took longer than this route's {} s",
                budget.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_may_wait_for_their_record_and_reads_are_short() {
        let append = budget(&Method::POST, "/api/v1/audit/append");
        assert!(append > crate::append::MAX_WAIT);
        assert_eq!(budget(&Method::POST, "/api/v1/audit/append:batch"), append);
        assert_eq!(
            budget(&Method::GET, "/api/v1/audit/records"),
            Duration::from_secs(10)
        );
        assert_eq!(
            budget(&Method::GET, "/api/v1/audit/records/{record_id}/proof"),
            Duration::from_secs(10)
        );
        assert!(budget(&Method::POST, "/api/v1/integrity/verify/range") > Duration::from_secs(10));
        assert_eq!(budget(&Method::GET, "/readyz"), Duration::from_secs(5));
        // Nothing outlives the router-wide backstop.
        for (m, r) in [
            (Method::POST, "/api/v1/audit/append"),
            (Method::POST, "/api/v1/integrity/verify/export"),
            (Method::POST, "/api/v1/admin/dlq/replay"),
        ] {
            assert!(budget(&m, r) <= crate::REQUEST_TIMEOUT, "{r}");
        }
    }
}
